"""Packaging rules from DESIGN.md that a wrong edit would silently break."""

import os
import re
import tomllib

from tests.reference_data import REPO_ROOT


def test_pyproject_has_lower_bounds_only_and_a_comfyui_requirement():
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)
    for requirement in project["project"]["dependencies"]:
        assert "==" not in requirement and "<" not in requirement, requirement
    assert project["tool"]["comfy"]["requires-comfyui"].startswith(">=0.3.64")
    with open(os.path.join(REPO_ROOT, "requirements.txt"), encoding="utf-8") as handle:
        lines = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    assert not any(re.match(r"(torch|numpy|pillow)\b", line, re.I) for line in lines)


def python_files(folder):
    for current, _, files in os.walk(os.path.join(REPO_ROOT, folder)):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(current, name)


def test_imports_inside_the_pack_are_relative_and_the_engine_never_imports_comfyui():
    own = re.compile(r"^\s*(from|import)\s+(trainer|nodes)\b", re.M)
    comfy = re.compile(r"^\s*(from|import)\s+(comfy|comfy_api|comfy_extras|folder_paths|server|execution)\b", re.M)
    for folder in ("trainer", "nodes"):
        for path in python_files(folder):
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
            assert not own.search(text), f"{path}: absolute import of the pack's own package"
            if folder == "trainer":
                assert not comfy.search(text), f"{path}: the engine imports ComfyUI"
