"""Which Python packages benchmarks/gpu.sh imports that the GPU machine lacks: the wheels that must travel.

    python -m benchmarks.gpu_carry [--comfyui CHECKOUT] [--diffusers]

prints one `name==version` a line (the version installed in this Python): what ComfyUI's model code
(`import comfy.model_base, comfy.model_patcher, comfy.sd, comfy.samplers`, from CHECKOUT) and, with --diffusers,
the fallback's diffusers need that benchmarks/gpu_machine_packages.txt does not list. Run by
benchmarks/prepare_gpu_carry.sh with the checkout's own Python.

ComfyUI's needs are read off its imports at run time: the packages its own files import (requirements.txt lists
more than the model code uses, and less than newer checkouts import). Then, for those and for diffusers, what
their metadata requires, transitively, among the packages the GPU machine lacks (torchsde brings trampoline). A
package the machine has brings its own needs there. ComfyUI imports on the CPU here: an import only its GPU path
makes is not seen.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_PACKAGES_FILE = os.path.join(REPO_ROOT, "benchmarks", "gpu_machine_packages.txt")
COMFY_MODULES = ("comfy.model_management", "comfy.model_base", "comfy.model_patcher", "comfy.sd", "comfy.samplers",
                 "comfy.supported_models")
# the GPU machine's interpreter, for requirement markers (python_version < "3.8" and the like)
GPU_MARKER_ENVIRONMENT = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                          "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                          "extra": ""}
# declared for every Python, imported only where the standard library lacks it (diffusers: Python < 3.8)
STANDARD_LIBRARY_BACKPORTS = {"importlib-metadata"}


def normalized(name: str) -> str:
    """PEP 503's form of a distribution name, so 'PyYAML', 'pyyaml' and 'py_yaml' compare alike."""
    return re.sub(r"[-_.]+", "-", name).lower()


def gpu_packages(path: str = GPU_PACKAGES_FILE) -> set[str]:
    with open(path, encoding="utf-8") as handle:
        return {normalized(line.strip()) for line in handle if line.strip() and not line.startswith("#")}


class CheckoutImports:
    """A meta-path finder that finds nothing and writes down the top-level modules the checkout's own files ask
    for (not the files of a virtual environment kept inside the checkout)."""

    def __init__(self, checkout: str):
        self.checkout = os.path.abspath(checkout) + os.sep
        self.tops: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        if self.asked_by_checkout():
            self.tops.add(fullname.split(".")[0])
        return None

    def asked_by_checkout(self) -> bool:
        frame = sys._getframe(2)
        while frame is not None and is_import_machinery(frame.f_code.co_filename):
            frame = frame.f_back
        if frame is None:
            return False
        filename = os.path.abspath(frame.f_code.co_filename)
        inside = filename[len(self.checkout):] if filename.startswith(self.checkout) else None
        return inside is not None and not inside.startswith(".") and "site-packages" not in inside.split(os.sep)


def is_import_machinery(filename: str) -> bool:
    """importlib's own frames (frozen bootstrap, import_module): the importer is the first frame past them."""
    return filename.startswith("<frozen ") or filename.endswith(os.path.join("importlib", "__init__.py"))


def comfyui_imports(checkout: str) -> set[str]:
    """The top-level modules ComfyUI's model code imports (loaded ones only: a probe that failed is optional)."""
    recorder = CheckoutImports(checkout)
    sys.meta_path.insert(0, recorder)
    try:
        sys.path.insert(0, checkout)
        from comfy.cli_args import args

        args.cpu = True
        for module in COMFY_MODULES:
            __import__(module)
    finally:
        sys.meta_path.remove(recorder)
    return {top for top in recorder.tops if top in sys.modules}


def distributions_of(tops: set[str]) -> set[str]:
    modules = importlib.metadata.packages_distributions()          # top-level module -> distributions
    return {name for top in tops for name in modules.get(top, ())}


def required(name: str) -> list[str]:
    """A distribution's declared requirements that apply on the GPU machine, without extras."""
    from packaging.requirements import Requirement

    needs = []
    for line in importlib.metadata.requires(name) or ():
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(GPU_MARKER_ENVIRONMENT):
            needs.append(requirement.name)
    return needs


def missing_closure(roots: set[str], has: set[str]) -> dict[str, str]:
    """name -> version installed here, for the roots and what they require, transitively, that the GPU machine
    lacks."""
    has = has | STANDARD_LIBRARY_BACKPORTS
    missing: dict[str, str] = {}
    frontier = [name for name in roots if normalized(name) not in has]
    while frontier:
        name = frontier.pop()
        if normalized(name) in {normalized(n) for n in missing}:
            continue
        try:
            missing[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is needed on the GPU machine and not installed here, so no version to fetch "
                             "is known: install it here first") from None
        frontier += [need for need in required(name) if normalized(need) not in has]
    return missing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", help="the ComfyUI checkout whose model code is imported")
    parser.add_argument("--diffusers", action="store_true", help="also diffusers (the fallback models)")
    args = parser.parse_args(argv)
    roots = set()
    if args.comfyui:
        roots |= distributions_of(comfyui_imports(os.path.abspath(args.comfyui)))
    if args.diffusers:
        roots.add("diffusers")
    missing = missing_closure(roots, gpu_packages())
    print("\n".join(f"{name}=={version}" for name, version in sorted(missing.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
