import pytest

from trainer.errors import ConfigError
from trainer.sample_prompts import SamplePrompt, parse_sample_prompts


def test_kohyas_prompt_options_with_the_nodes_defaults():
    defaults = SamplePrompt("", width=512, height=512, steps=20, cfg=7.0, seed=3)
    text = """# a comment
a photo of sks dog --n blurry, lowres --w 640 --h 770 --s 24 --l 6.5 --d 42

sks dog on grass"""
    first, second = parse_sample_prompts(text, defaults)
    assert first == SamplePrompt("a photo of sks dog", "blurry, lowres", 640, 768, 24, 6.5, 42)   # 770 -> 768
    assert second == SamplePrompt("sks dog on grass", "", 512, 512, 20, 7.0, 3)
    with pytest.raises(ConfigError, match="--s needs a number"):
        parse_sample_prompts("dog --s many", defaults)
    with pytest.raises(ConfigError, match="no prompt"):
        parse_sample_prompts("--n blurry", defaults)
