"""ComfyUI tier: runs against a real ComfyUI checkout at COMFYUI_PATH (default ~/ComfyUI), skipped without one."""

from __future__ import annotations

import os

import pytest

from tests.comfyui import harness


@pytest.fixture(scope="session")
def comfy():
    reason = harness.missing_reason()
    if reason:
        pytest.skip(reason)
    harness.bootstrap()
    return harness


@pytest.fixture(scope="session")
def pack(comfy):
    return comfy.load_pack()


@pytest.fixture(scope="session")
def tiny(comfy):
    return comfy.load_tiny_models()


@pytest.fixture
def comfy_folders(comfy, tmp_path):
    """Point ComfyUI's loras, input and output folders at a fresh temporary tree for one test."""
    import folder_paths

    loras = tmp_path / "models" / "loras"
    loras.mkdir(parents=True)
    saved = (folder_paths.folder_names_and_paths["loras"], folder_paths.get_input_directory(),
             folder_paths.get_output_directory())
    folder_paths.folder_names_and_paths["loras"] = ([str(loras)], saved[0][1])
    folder_paths.set_input_directory(str(tmp_path / "input"))
    folder_paths.set_output_directory(str(tmp_path / "output"))
    os.makedirs(tmp_path / "input", exist_ok=True)
    yield {"loras": str(loras), "input": str(tmp_path / "input"), "output": str(tmp_path / "output")}
    folder_paths.folder_names_and_paths["loras"] = saved[0]
    folder_paths.set_input_directory(saved[1])
    folder_paths.set_output_directory(saved[2])
