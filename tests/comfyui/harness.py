"""Bootstrapping real ComfyUI for tests: where it is, starting it in-process on the CPU, loading the pack."""

from __future__ import annotations

import importlib.util
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACK_MODULE = "comfyui_lora_trainer"
TINY_PACK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_models_pack")


def comfyui_path() -> str:
    """The one checkout this test process runs against (scripts/run_tests.py sets one per process)."""
    configured = os.environ.get("COMFYUI_PATH", "~/ComfyUI").split(":")[0]
    return os.path.abspath(os.path.expanduser(configured))


def comfyui_version(checkout: str | None = None) -> str:
    """A checkout's version string from its comfyui_version.py, e.g. '0.3.64'."""
    try:
        with open(os.path.join(checkout or comfyui_path(), "comfyui_version.py"), encoding="utf-8") as handle:
            return handle.read().split("__version__")[-1].split("=")[-1].strip().strip("\"'")
    except OSError:
        return "unknown version"


def missing_reason() -> str | None:
    path = comfyui_path()
    if not os.path.isfile(os.path.join(path, "comfy", "model_patcher.py")):
        return (f"ComfyUI tier skipped: no ComfyUI checkout at {path}. Clone ComfyUI there (or set COMFYUI_PATH) "
                "and run `bash scripts/setup.sh` to install its requirements; see README.md.")
    return None


def bootstrap(cpu: bool = True) -> None:
    """Import ComfyUI as a library, on the CPU unless `cpu` is False (then on the device ComfyUI picks, as
    benchmarks/gpu_train_speed.py wants on a GPU). Must run before anything imports comfy.model_management."""
    path = comfyui_path()
    if path not in sys.path:
        sys.path.insert(0, path)
    from comfy.cli_args import args

    args.cpu = cpu
    args.disable_smart_memory = True
    importlib.import_module("comfy.model_management")     # the device is chosen now, with args.cpu set


def load_module_from_folder(name: str, folder: str):
    """Import a folder as a package under `name`, as ComfyUI's load_custom_node does."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_pack():
    return load_module_from_folder(PACK_MODULE, REPO_ROOT)


def load_tiny_models():
    load_module_from_folder("lora_trainer_test_tiny_models", TINY_PACK_DIR)
    return sys.modules["lora_trainer_test_tiny_models.tiny_models"]
