"""ComfyUI's folders, progress bar, messages and Cancel, behind plain functions.

Imports of ComfyUI modules happen inside functions, so importing the pack never drags in the server.
"""

from __future__ import annotations

import os

from ..trainer.errors import ConfigError, DatasetError

RUN_DATA_FOLDER = "lora-trainer"
EVENT_PROGRESS = "lora_trainer.progress"


def loras_folder() -> str:
    import folder_paths

    folder = folder_paths.get_folder_paths("loras")[0]
    os.makedirs(folder, exist_ok=True)
    return folder


def run_data_folder(run_name: str) -> str:
    """output/lora-trainer/<run name>/: the run log and states; never the loras folder."""
    import folder_paths

    return os.path.join(folder_paths.get_output_directory(), RUN_DATA_FOLDER, run_name)


def lora_file_names() -> list[str]:
    """The LoRA files ComfyUI lists (what LoraLoader offers), for a combo."""
    import folder_paths

    return list(folder_paths.get_filename_list("loras"))


def lora_file_path(name: str) -> str:
    """The full path of a file LoraLoader lists, with an actionable error when it is gone."""
    import folder_paths

    path = folder_paths.get_full_path("loras", name)
    if path is None:
        raise ConfigError(f"The LoRA {name!r} is not in ComfyUI's loras folders any more; pick another one, or "
                          "(none) to start a fresh LoRA.")
    return path


def latent_cache_fallback_folder() -> str:
    """output/lora-trainer/cache/: disk-cached latents of image folders that cannot be written to."""
    import folder_paths

    return os.path.join(folder_paths.get_output_directory(), RUN_DATA_FOLDER, "cache")


def resolve_dataset_folder(path: str) -> str:
    """An absolute path as is; a relative one under ComfyUI's input folder."""
    import folder_paths

    cleaned = path.strip().strip('"').strip("'")
    if not cleaned:
        raise DatasetError("No dataset folder given. Type a folder path: absolute, or relative to ComfyUI's "
                           f"input folder ({folder_paths.get_input_directory()}).")
    cleaned = os.path.expanduser(cleaned)
    if os.path.isabs(cleaned):
        return os.path.normpath(cleaned)
    return os.path.normpath(os.path.join(folder_paths.get_input_directory(), cleaned))


def check_cancel() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


def is_cancel(exc: BaseException) -> bool:
    import comfy.model_management

    return isinstance(exc, comfy.model_management.InterruptProcessingException)


class ProgressReporter:
    """ComfyUI progress bar plus a text line and a websocket event per step."""

    def __init__(self, node_id: str | None, total: int):
        import comfy.utils

        self.node_id = node_id
        self.total = total
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)

    def update(self, value: int, text: str | None = None, event: dict | None = None) -> None:
        self.bar.update_absolute(value, self.total)
        server = _server()
        if server is None or self.node_id is None:
            return
        if text:
            server.send_progress_text(text, self.node_id)
        if event is not None:
            server.send_sync(EVENT_PROGRESS, {"node": self.node_id, **event}, None)

    def preview(self, value: int, image, max_size: int = 512) -> None:
        """An image on the node, as a sampler's live preview is shown (ComfyUI's progress-bar preview)."""
        self.bar.update_absolute(value, self.total, ("JPEG", image, max_size))


def _server():
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)
