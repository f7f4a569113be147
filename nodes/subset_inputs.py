"""The per-subset widgets both dataset nodes offer (kohya's subset options: caption processing, flip_aug,
alpha_mask; kohya's names and defaults), and reading them."""

from __future__ import annotations

from comfy_api.latest import io

from ..trainer.dataset.caption_processing import CaptionOptions


def caption_option_inputs() -> list:
    """Optional inputs, so workflows and API prompts from before they existed still validate."""
    return [
        io.Boolean.Input("shuffle_caption", default=False, optional=True,
                         tooltip="Shuffle the comma-separated tags of each caption at every step (kohya)."),
        io.Int.Input("keep_tokens", default=0, min=0, max=255, optional=True,
                     tooltip="The first N tags stay in front, unshuffled and never dropped (e.g. the trigger)."),
        io.String.Input("keep_tokens_separator", default="", optional=True,
                        tooltip="e.g. '|||': tags before it stay fixed in front, after a second one fixed at the end."),
        io.String.Input("caption_separator", default=",", optional=True, tooltip="What separates tags."),
        io.String.Input("secondary_separator", default="", optional=True,
                        tooltip="e.g. ';;;': 'sky;;;cloud' moves and drops as one tag, then becomes 'sky,cloud'."),
        io.Float.Input("caption_dropout_rate", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip="Share of steps a sample trains with an empty caption."),
        io.Int.Input("caption_dropout_every_n_epochs", default=0, min=0, max=10000, optional=True,
                     tooltip="Every Nth epoch trains with empty captions; 0 = never."),
        io.Float.Input("caption_tag_dropout_rate", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip="Each unfixed tag is left out with this probability at every step."),
        io.String.Input("caption_prefix", default="", optional=True, tooltip="Put before every caption."),
        io.String.Input("caption_suffix", default="", optional=True, tooltip="Put after every caption."),
    ]


def augmentation_inputs(with_alpha_mask: bool = True) -> list:
    inputs = [io.Boolean.Input("flip_aug", default=False, optional=True,
                               tooltip="Also cache each image mirrored; training takes one of the two at random "
                                       "(kohya's flip_aug). Doubles these images' cached latents.")]
    if with_alpha_mask:
        inputs.append(io.Boolean.Input("alpha_mask", default=False, optional=True,
                                       tooltip="Weight the loss by each image's transparency (or a <name>_mask.png "
                                               "beside it: white trains, black is ignored), as kohya's alpha_mask."))
    for name in ("random_crop", "color_aug"):
        inputs.append(io.Boolean.Input(name, default=False, optional=True,
                                       tooltip=f"kohya's {name}. It cannot work with cached latents, which this "
                                               "trainer always uses, so turning it on stops with the reason."))
    return inputs


CAPTION_OPTION_NAMES = tuple(CaptionOptions.__dataclass_fields__)


def caption_options_from(values: dict) -> CaptionOptions:
    """The CaptionOptions among a node's keyword arguments (absent ones keep kohya's defaults)."""
    return CaptionOptions(**{name: values[name] for name in CAPTION_OPTION_NAMES if name in values})
