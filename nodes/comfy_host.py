"""ComfyUI's folders, progress bar, messages and Cancel, behind plain functions.

Imports of ComfyUI modules happen inside functions, so importing the pack never drags in the server.
"""

from __future__ import annotations

import io
import os
import sys
import time

from ..trainer.errors import ConfigError
from ..trainer.paths import LATENT_CACHE_FOLDER, checked_run_name, is_inside, resolve_folder

RUN_DATA_FOLDER = "lora-trainer"
EVENT_PROGRESS = "lora_trainer.progress"
SHOW_EVERY_SECONDS = 0.25                  # the progress bar and text line, at most 4 times a second
LIVE_ATTRIBUTE = "lora_trainer_live"       # the LiveRuns the server holds (nodes/live_view.py)


def loras_folder() -> str:
    import folder_paths

    folder = folder_paths.get_folder_paths("loras")[0]
    os.makedirs(folder, exist_ok=True)
    return folder


def run_data_folder(run_name: str) -> str:
    """output/lora-trainer/<run name>/: the run log and states; never the loras folder. ConfigError for a name
    that is not one plain run name (so it can never point elsewhere)."""
    import folder_paths

    return os.path.join(folder_paths.get_output_directory(), RUN_DATA_FOLDER, checked_run_name(run_name, "run name"))


def lora_file_names() -> list[str]:
    """The LoRA files ComfyUI lists (what LoraLoader offers), for a combo."""
    import folder_paths

    return list(folder_paths.get_filename_list("loras"))


def lora_file_path(name: str) -> str:
    """The full path of a file LoraLoader lists, checked to be a file in one of ComfyUI's loras folders, with an
    actionable error when it is not (or is gone).

    Only a name ComfyUI lists is taken: Configure LoRA's validate_inputs takes **values, which makes ComfyUI skip
    its own "value in the combo's list" check, so a prompt sent to the API could carry any string. Where the file
    lies is judged by its path as listed, not by a symlink's target: ComfyUI lists and loads linked files in the
    loras folder (shared model folders), and the user put the link there.
    """
    import folder_paths

    folders = folder_paths.get_folder_paths("loras")
    if name not in lora_file_names():
        raise ConfigError(f"continue_from {name!r} is not one of the LoRA files in ComfyUI's loras folders "
                          f"({', '.join(folders)}); pick one from the list, or (none) to start a fresh LoRA.")
    path = folder_paths.get_full_path("loras", name)
    if path is None or not os.path.isfile(path) or \
            not any(is_inside(path, folder, follow_links=False) for folder in folders):
        raise ConfigError(f"The LoRA {name!r} is not in ComfyUI's loras folders any more; pick another one, or "
                          "(none) to start a fresh LoRA.")
    return path


def latent_cache_fallback_folder() -> str:
    """output/lora-trainer/cache/: disk-cached latents of image folders that cannot be written to."""
    import folder_paths

    return os.path.join(folder_paths.get_output_directory(), RUN_DATA_FOLDER, LATENT_CACHE_FOLDER)


def resolve_dataset_folder(path: str, kind: str = "Dataset folder") -> str:
    """The existing folder a user typed, symlinks resolved: absolute (any folder, as DESIGN.md allows), or
    relative to ComfyUI's input folder and staying inside it. DatasetError saying what to type otherwise."""
    import folder_paths

    return resolve_folder(path, folder_paths.get_input_directory(), kind, "ComfyUI's input folder")


def check_cancel() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


def is_cancel(exc: BaseException) -> bool:
    import comfy.model_management

    return isinstance(exc, comfy.model_management.InterruptProcessingException)


class ProgressReporter:
    """ComfyUI progress bar plus a text line and a websocket event per step; the events and the previews are
    also kept in the server's LiveRuns, for a page that opens mid-run."""

    def __init__(self, node_id: str | None, total: int):
        import comfy.utils

        self.node_id = node_id
        self.total = total
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.last_shown = -float("inf")

    def update(self, value: int, text: str | None = None, event: dict | None = None) -> None:
        # the bar and the text line redraw the node in the page: at most SHOW_EVERY_SECONDS apart (a GPU runs
        # 10+ steps a second), always for the last step and for a run's start and end; the chart's events all go
        now = time.monotonic()
        key_moment = value >= self.total or (event is not None and
                                              ("started" in event or "status" in event or "plan" in event))
        server = _server()
        if key_moment or now - self.last_shown >= SHOW_EVERY_SECONDS:
            self.last_shown = now
            self.bar.update_absolute(value, self.total)
            if text and server is not None and self.node_id is not None:
                server.send_progress_text(text, self.node_id)
        if server is None or self.node_id is None:
            return
        if event is not None:
            live = getattr(server, LIVE_ATTRIBUTE, None)
            if live is not None:
                event = {**event, "run_id": live.record(str(self.node_id), event)}
            if "history" in event:     # a resumed run's earlier points: the page asks the route for them
                event = {key: value for key, value in event.items() if key != "history"}
            server.send_sync(EVENT_PROGRESS, {"node": self.node_id, **event}, None)

    def preview(self, value: int, image) -> None:
        """An image shown on the node (the last in-training preview), kept in memory for the preview route."""
        server = _server()
        live = getattr(server, LIVE_ATTRIBUTE, None) if server is not None else None
        if live is None or self.node_id is None:
            return
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
        event = live.preview(str(self.node_id), value, buffer.getvalue())
        if event:
            self.update(value, None, event)


def attach_live_view() -> None:
    """Gives the running server its LiveRuns and the pack's two GET routes (once; a missing server is a test
    or a script importing the pack, which needs neither)."""
    from .live_view import LiveRuns, register_routes

    server = _server()
    if server is None or getattr(server, LIVE_ATTRIBUTE, None) is not None:
        return
    live = LiveRuns()
    setattr(server, LIVE_ATTRIBUTE, live)
    register_routes(server.routes, live)


def _server():
    """The running PromptServer, or None. Looked up, not imported: ComfyUI's main imports `server` before any
    node runs, so where it is not imported there is no server (a test or a script calling the nodes), and an
    import attempt there can fail (ComfyUI's own `comfy/utils.py` can hide its `utils` package on sys.path)
    and would then be retried, and partly run, at every progress update."""
    prompt_server = getattr(sys.modules.get("server"), "PromptServer", None)
    return getattr(prompt_server, "instance", None)
