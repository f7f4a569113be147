"""In-training sample prompts in kohya's syntax (train_util.py's sample_images prompt options):

    a photo of sks dog --n blurry, lowres --w 512 --h 768 --s 24 --l 6.5 --d 42

`--n` negative prompt, `--w` / `--h` size (rounded down to a multiple of 64, as the UNet's latent grid
needs), `--s` steps, `--l` cfg scale, `--d` seed. Options not given take the node's defaults. Lines that are
empty or start with `#` are skipped, as in kohya's prompt files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .errors import ConfigError

_OPTION = re.compile(r"\s--(n|w|h|s|l|d)\s+")


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    cfg: float = 7.0
    seed: int = 0


def parse_sample_prompt(line: str, defaults: SamplePrompt) -> SamplePrompt:
    """One prompt line; `defaults` gives what the line does not say."""
    parts = _OPTION.split(" " + line.strip())
    prompt = parts[0].strip()
    values: dict = {"prompt": prompt}
    names = {"n": "negative", "w": "width", "h": "height", "s": "steps", "l": "cfg", "d": "seed"}
    for flag, value in zip(parts[1::2], parts[2::2]):
        value = value.strip()
        try:
            if flag == "n":
                values["negative"] = value
            elif flag == "l":
                values["cfg"] = float(value)
            else:
                values[names[flag]] = int(value)
        except ValueError:
            raise ConfigError(f"Sample prompt {line.strip()!r}: --{flag} needs a number, not {value!r}.") from None
    sample = replace(defaults, **values)
    if not sample.prompt:
        raise ConfigError(f"Sample prompt {line.strip()!r} has no prompt before its options.")
    if sample.width < 64 or sample.height < 64 or sample.steps < 1:
        raise ConfigError(f"Sample prompt {line.strip()!r}: width and height must be 64 or more and steps 1 or more.")
    # the UNet needs latent sides divisible by 8 (3 downsamplings): image sides in multiples of 64
    return replace(sample, width=sample.width // 64 * 64, height=sample.height // 64 * 64)


def parse_sample_prompts(text: str, defaults: SamplePrompt) -> list[SamplePrompt]:
    lines = [line for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [parse_sample_prompt(line, defaults) for line in lines]
