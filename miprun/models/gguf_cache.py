"""GGUF files de-quantised once: a safetensors copy cached by the file's content hash.

transformers de-quantises a ``.gguf`` file on every load (40 s for a 270M model here, minutes for
billions). :func:`converted_checkpoint` does it once per file *content* (SHA-256, so a renamed or
moved copy hits the cache and an edited file does not) and keeps the float checkpoint under
``$MIPRUN_CACHE_DIR/gguf-converted/<hash>/``; later loads read it like any checkpoint directory.
``miprun cache`` lists what is cached and ``miprun cache --clear-gguf`` removes the converted
copies (:func:`clear_conversions`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

CONVERTED = "gguf-converted"
"""The cache subdirectory holding one converted checkpoint per GGUF content hash."""

SOURCE_NAME = "miprun_gguf_source.json"
"""File written beside a converted checkpoint: the GGUF file it came from and its hash."""


def file_digest(path: Path, chunk: int = 1 << 24) -> str:
    """SHA-256 of ``path``'s content (hex), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(gguf: Path, target: Path) -> None:
    """Write the de-quantised checkpoint of ``gguf`` (weights, config, tokenizer) into ``target``.

    A model loaded from GGUF is flagged as quantized and refuses ``save_pretrained``; its weights
    are already de-quantised, so they move into a plain model built from the same config. That
    model is built without storage (on the meta device) and takes the loaded tensors themselves, so
    the conversion holds one copy of the de-quantised weights, not two (28 GB less for a 7B model).
    Only persistent tensors are saved, so the plain model's unmaterialised non-persistent buffers
    (rotary frequencies) are never read.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
    config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict(), assign=True)
    model.tie_weights()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def converted_checkpoint(gguf: Path, cache: Path) -> tuple[Path, str, bool]:
    """The cached de-quantised checkpoint of ``gguf`` under ``cache``, converted now if absent.

    :returns: (checkpoint directory, content hash, whether it was already cached).
    """
    digest = file_digest(gguf)
    target = cache / CONVERTED / digest
    if (target / "config.json").exists():
        return target, digest, True
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{digest}-") as tmp:
        staging = Path(tmp) / "checkpoint"
        convert_gguf(gguf, staging)
        (staging / SOURCE_NAME).write_text(json.dumps({"gguf": str(gguf.resolve()), "sha256": digest}) + "\n")
        if not (target / "config.json").exists():  # another process may have finished first
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
    return target, digest, False


def cached_conversions(cache: Path) -> list[dict[str, Any]]:
    """Every converted checkpoint under ``cache``: hash, source file, size in bytes, path."""
    rows = []
    for directory in sorted((cache / CONVERTED).glob("*")):
        if not directory.is_dir() or directory.name.startswith("."):
            continue
        source = directory / SOURCE_NAME
        origin = json.loads(source.read_text()).get("gguf") if source.exists() else None
        size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
        rows.append({"sha256": directory.name, "gguf": origin, "bytes": size, "path": str(directory)})
    return rows


def clear_conversions(cache: Path) -> int:
    """Remove every converted checkpoint under ``cache``; returns the bytes freed."""
    freed = sum(row["bytes"] for row in cached_conversions(cache))
    shutil.rmtree(cache / CONVERTED, ignore_errors=True)
    return freed
