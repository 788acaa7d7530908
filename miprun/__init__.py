"""miprun: make large language models smaller by removing what carries little information.

The public API is small: :func:`prune` runs collect → score → select → operate on a model,
:data:`hookimpl` marks plugin hook implementations, and :func:`get_registry` lists strategies.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

PROJECT = "miprun"
hookimpl = pluggy.HookimplMarker(PROJECT)


def prune(*args, **kwargs):
    """Prune a model; see :func:`miprun.pipeline.prune` for the arguments."""
    from miprun.pipeline import prune as _prune

    return _prune(*args, **kwargs)


def get_registry():
    """Return the process-wide strategy registry (built-ins and installed plugins)."""
    from miprun.registry import get_registry as _get

    return _get()


__all__ = ["__version__", "hookimpl", "prune", "get_registry", "PROJECT"]
