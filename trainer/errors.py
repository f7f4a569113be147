"""Errors a user can act on.

Every error the engine raises on bad input is a `TrainerError`: its message says what is wrong, where,
and how to fix it, so the ComfyUI side can show it as is instead of a stack trace from inside torch.
"""


class TrainerError(Exception):
    """Bad input or state that the user can fix; the message is meant to be shown verbatim.

    ComfyUI titles its error dialog with the exception's `module.qualname`, and it imports this pack under
    its folder path, so the title would read `/path/to/custom_nodes/comfyui-lora-trainer.trainer.errors.
    DatasetError`. It prints the bare name for built-in exceptions only, so these classes say they are
    built-in: the dialog then reads `DatasetError`. (They are never pickled, which would look the name up.)
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__module__ = "builtins"


TrainerError.__module__ = "builtins"


class DatasetError(TrainerError):
    """The dataset folder is missing, empty, or not in kohya's `N_name` layout."""


class ConfigError(TrainerError):
    """A setting is out of range or settings contradict each other."""


class ModelError(TrainerError):
    """The model handed to the trainer is not one this version can train."""


class SaveError(TrainerError):
    """A LoRA file could not be written where it was asked to go."""
