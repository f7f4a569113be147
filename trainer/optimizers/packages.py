"""The packages some optimizers need, checked only when such an optimizer is chosen.

Importing the pack never imports them: a missing, broken or too old package is found here, when the
Optimizer node or the training run asks for it, and reported with the exact command that installs it
into the Python that runs ComfyUI.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
import sys
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Package:
    module: str                   # import name
    distribution: str             # pip name
    minimum: str = ""             # lowest version that works here, "" for any
    why_minimum: str = ""

    def install_command(self) -> str:
        requirement = f"{self.distribution}>={self.minimum}" if self.minimum else self.distribution
        return f'"{sys.executable}" -m pip install "{requirement}"'


BITSANDBYTES = Package("bitsandbytes", "bitsandbytes", "0.50", "the first version whose 8-bit optimizers step on CPU")
PRODIGYOPT = Package("prodigyopt", "prodigyopt", "1.0")
DADAPTATION = Package("dadaptation", "dadaptation", "3.1")
LION_PYTORCH = Package("lion_pytorch", "lion-pytorch", "0.1")
TRANSFORMERS = Package("transformers", "transformers", "4.30")


def import_module(name: str):
    """The import the checks use (a seam for tests that stand in a missing or broken package)."""
    return importlib.import_module(name)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def installed_version(package: Package, module) -> str:
    """The module's __version__, else its distribution's version; "" when neither is known."""
    version = getattr(module, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version(package.distribution)
        except importlib.metadata.PackageNotFoundError:
            return ""
    return str(version)


def package_problem(package: Package) -> str:
    """Why `package` cannot be used here ("" when it can): missing, failing to import, or too old."""
    try:
        module = import_module(package.module)
    except ImportError:
        return f"{package.distribution} is not installed"
    except Exception as exc:  # a broken install raises anything at import (missing native libraries, ...)
        logger.warning("lora-trainer: importing %s failed: %r", package.module, exc)
        return f"{package.distribution} is installed but fails to import ({type(exc).__name__}: {exc})"
    if package.minimum:
        version = installed_version(package, module)
        if version and _version_tuple(version) < _version_tuple(package.minimum):
            reason = f" ({package.why_minimum})" if package.why_minimum else ""
            return f"{package.distribution} {version} is too old: {package.minimum} or newer is needed{reason}"
    return ""
