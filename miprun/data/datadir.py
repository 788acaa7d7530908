"""Where local copies of named data sets are found.

``MIPRUN_DATA_DIR`` names a directory laid out like the project's shared data (``wikitext-2/``,
``wikitext-2-raw/``, ``piqa/``, …). Without it, ``../shared/data`` relative to the current
directory and to this source tree is tried, so a checkout beside the shared data works as is.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path | None:
    """The local data directory, or None when there is none (then Hugging Face datasets is used)."""
    configured = os.environ.get("MIPRUN_DATA_DIR")
    if configured:
        return Path(configured).expanduser()
    repo_root = Path(__file__).resolve().parents[2]
    for candidate in (Path.cwd() / ".." / "shared" / "data", repo_root / ".." / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def local_file(*parts: str) -> Path | None:
    """``data_dir()/parts...`` when that file exists, else None."""
    root = data_dir()
    if root is None:
        return None
    path = root.joinpath(*parts)
    return path if path.exists() else None
