"""What every run records so that it can be reproduced: package versions and platform."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

PACKAGES = ("miprun", "torch", "transformers", "pluggy", "accelerate", "safetensors", "gguf", "lm_eval", "datasets")


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages a run depends on."""
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found
