"""A checkpoint's safetensors files, read tensor by tensor and written shard by shard.

Layer-wise execution (:mod:`miprun.models.layerwise`) never holds a whole model: it reads the
tensors of one block when it needs them and writes the pruned checkpoint a shard at a time.
:class:`CheckpointTensors` knows which file holds which tensor (``model.safetensors`` or the
sharded index) and reads a group of tensors through a memory map opened for that read only, so
pages of the file do not stay mapped — and counted in the process's resident memory — after the
block is done. :class:`ShardWriter` writes tensors into shards of at most ``shard_bytes`` and the
index ``from_pretrained`` reads.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from miprun.errors import MiprunError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


@contextmanager
def _opened(file: Path) -> Iterator[Any]:
    """``safe_open(file)``; a damaged or unreadable weights file is a one-line error naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, framework="pt") as handle:
            yield handle
    except (SafetensorError, OSError) as exc:
        raise MiprunError(f"weights file '{file}' cannot be read ({exc}); re-save or re-download the checkpoint") from None


class CheckpointTensors:
    """The tensors of the safetensors checkpoint in ``directory``, by name, read on demand.

    :param renames: ``(pattern, replacement)`` regular expressions that turn a file's tensor names
        into the model's (transformers renames some on load: GPT-NeoX's ``embed_out`` is the
        model's ``lm_head``); every name this class answers to is the model's.
    """

    def __init__(self, directory: Path, renames: Iterable[tuple[str, str]] = ()) -> None:
        self.directory = Path(directory)
        index = self.directory / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise MiprunError(f"'{index}' is not a safetensors index ({exc}); re-save the checkpoint") from None
            self.files = {name: self.directory / file for name, file in weight_map.items()}
        elif (self.directory / SINGLE).is_file():
            with _opened(self.directory / SINGLE) as handle:
                self.files = {name: self.directory / SINGLE for name in handle.keys()}
        else:
            raise MiprunError(f"'{self.directory}' has no {SINGLE} or {INDEX}; layer-wise execution reads "
                              f"safetensors checkpoints (save the model with save_pretrained first)")
        self.stored: dict[str, str] = {}  # the model's name → the file's
        for stored in list(self.files):
            name = stored
            for pattern, replacement in renames:
                name = re.sub(pattern, replacement, name)
            self.stored[name] = stored
        self.files = {name: self.files[stored] for name, stored in self.stored.items()}
        missing = sorted({str(f.name) for f in self.files.values() if not f.is_file()})
        if missing:
            raise MiprunError(f"checkpoint '{self.directory}' lacks the shard files {', '.join(missing)}")
        self._elements: dict[str, int] | None = None

    def names(self) -> list[str]:
        """Every tensor name, in file order."""
        return list(self.files)

    def read(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """The tensors ``names`` (CPU, the checkpoint's dtype), each file mapped for this read only."""
        by_file: dict[Path, list[str]] = defaultdict(list)
        for name in names:
            if name not in self.files:
                raise MiprunError(f"checkpoint '{self.directory}' has no tensor '{name}'")
            by_file[self.files[name]].append(name)
        tensors: dict[str, torch.Tensor] = {}
        for file, group in by_file.items():
            with _opened(file) as handle:
                for name in group:
                    tensors[name] = handle.get_tensor(self.stored[name])
        return tensors

    def elements(self) -> dict[str, int]:
        """Number of elements of every tensor, from the files' headers alone (nothing is read)."""
        if self._elements is None:
            model_name = {stored: name for name, stored in self.stored.items()}
            elements: dict[str, int] = {}
            for file in sorted(set(self.files.values())):
                try:
                    with open(file, "rb") as handle:
                        length = int.from_bytes(handle.read(8), "little")
                        header = json.loads(handle.read(length))
                except (OSError, ValueError) as exc:
                    raise MiprunError(f"weights file '{file}' has no readable header ({exc}); re-save or re-download "
                                      f"the checkpoint") from None
                for name, entry in header.items():
                    if name in model_name:
                        elements[model_name[name]] = math.prod(entry["shape"])
            self._elements = elements
        return self._elements


class ShardWriter:
    """Write tensors into ``directory`` as safetensors shards of at most ``shard_bytes`` each
    (one tensor larger than that gets a shard of its own), then the index when there is more
    than one shard — the layout ``save_pretrained`` writes and ``from_pretrained`` reads."""

    def __init__(self, directory: Path, shard_bytes: int) -> None:
        self.directory = Path(directory)
        self.shard_bytes = max(1, int(shard_bytes))
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue ``tensor`` under ``name``; a full shard is written to disk."""
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.shard_bytes:
            self._flush()
        self._pending[name] = tensor.detach().to("cpu").contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        path = self.directory / f".shard-{len(self._shards):05d}.safetensors"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._shards.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Write the last shard, name the shards as ``from_pretrained`` expects, write the index;
        returns the file names written."""
        if self._pending or not self._shards:
            self._flush()
        count = len(self._shards)
        if count == 1:
            self._shards[0][0].rename(self.directory / SINGLE)
            return [SINGLE]
        weight_map: dict[str, str] = {}
        names = []
        for number, (path, tensors) in enumerate(self._shards, start=1):
            final = f"model-{number:05d}-of-{count:05d}.safetensors"
            path.rename(self.directory / final)
            weight_map.update({tensor: final for tensor in tensors})
            names.append(final)
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.directory / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return names + [INDEX]
