"""Packaging rules (docs/architecture.md) that a wrong edit would silently break."""

import ast
import os
import re
import sys

try:
    import tomllib
except ModuleNotFoundError:          # Python 3.10: the same parser, as the tomli package
    import tomli as tomllib

from tests.reference_data import REPO_ROOT

# import name -> distribution name, where they differ
DISTRIBUTION_OF = {"PIL": "pillow", "tomli": "tomli", "cv2": "opencv-python-headless", "lycoris": "lycoris-lora"}
# imported by the tests but not from the [test] extra: the pack itself, ComfyUI (a checkout), and tools of
# slow tests that skip, saying why, where they are missing
NOT_FROM_A_REGISTRY = {"tests", "trainer", "nodes", "benchmarks", "comfyui_lora_trainer",
                       "lora_trainer_test_tiny_models", "comfy", "comfy_api", "comfy_extras", "folder_paths", "server",
                       "execution", "playwright"}


def pyproject() -> dict:
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as handle:
        return tomllib.load(handle)


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~; \[]", requirement, maxsplit=1)[0].strip().lower()


def test_pyproject_has_lower_bounds_only_and_a_comfyui_requirement():
    project = pyproject()
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


# the command line's one bridge to ComfyUI's loaders (issue 11: a checkpoint loads through ComfyUI when ComfyUI is
# importable); it imports ComfyUI lazily, inside functions, and nothing else in trainer/ may
ENGINE_COMFYUI_BRIDGE = os.path.join("trainer", "cli", "comfy_backend.py")


def test_imports_inside_the_pack_are_relative_and_the_engine_never_imports_comfyui():
    own = re.compile(r"^\s*(from|import)\s+(trainer|nodes)\b", re.M)
    comfy = re.compile(r"^\s*(from|import)\s+(comfy|comfy_api|comfy_extras|folder_paths|server|execution)\b", re.M)
    by_name = re.compile(r"import_module\(\s*f?[\"'](comfy|folder_paths|server|execution)")
    for folder in ("trainer", "nodes"):
        for path in python_files(folder):
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
            assert not own.search(text), f"{path}: absolute import of the pack's own package"
            if folder == "trainer" and os.path.relpath(path, REPO_ROOT) != ENGINE_COMFYUI_BRIDGE:
                assert not comfy.search(text), f"{path}: the engine imports ComfyUI"
                assert not by_name.search(text), f"{path}: the engine imports ComfyUI by name"


def imported_top_level_modules(folder: str) -> set[str]:
    names = set()
    for path in python_files(folder):
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_the_test_extra_installs_everything_the_tests_import():
    """`pip install .[test]` (what scripts/setup.sh runs) must bring every package a test imports."""
    project = pyproject()["project"]
    declared = {requirement_name(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    standard = set(sys.stdlib_module_names) | {"tomllib"}      # tomllib: standard from 3.11, tomli before
    imported = imported_top_level_modules("tests") - standard - NOT_FROM_A_REGISTRY
    missing = {DISTRIBUTION_OF.get(name, name).lower() for name in imported} - declared
    assert not missing, f"tests import {sorted(missing)}, which the [test] extra does not install"
    assert "peft" in declared, "diffusers loads LoRA files only with peft installed"


def test_the_readme_claims_what_pyproject_declares():
    project = pyproject()
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    floor = project["project"]["requires-python"].removeprefix(">=")
    assert f"Python** {floor} or newer" in readme
    assert f"git clone {project['project']['urls']['Repository']}" in readme
    comfy_floor = project["tool"]["comfy"]["requires-comfyui"].removeprefix(">=")
    assert f"**ComfyUI** {comfy_floor} or newer" in readme and f"**v{comfy_floor}**" in readme
    assert f"comfy node install {project['project']['name']}" in readme


def test_the_engine_reports_the_version_pyproject_declares():
    import trainer

    assert trainer.__version__ == pyproject()["project"]["version"]
