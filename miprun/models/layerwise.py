"""Layer-wise execution: a model whose blocks stay in its checkpoint files until they run.

:func:`load_layerwise` builds the model's skeleton without weights (accelerate's empty-weight
context), loads what is not a block — the embedding, the final norm, the head — and leaves every
block's parameters as meta tensors. A :class:`BlockLoader` attached to the model reads a block's
tensors from the safetensors files when the block is about to run and drops them afterwards, so the
resident model is the embedding and head plus one block:

* **on demand** — a forward pre-hook loads the block, a forward hook frees it: any code that runs
  the model batch by batch (perplexity, healing, generation) works unchanged, reading every block
  once per batch;
* **block-major** — :mod:`miprun.models.sweep` *pins* a block and pushes every calibration batch
  and every candidate stream through it before going on, so a sweep reads each block once.

Edits to a block's weights (the healing fold) are made inside :meth:`BlockLoader.editing` and kept
as overrides, applied whenever the block is loaded again and written by :meth:`BlockLoader.save`,
which writes the (pruned) checkpoint shard by shard from the source files without materialising the
model. Removing blocks needs no weights: the surgeon edits the skeleton's block list, and each block
remembers where its tensors are (``block_sources``).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from miprun.errors import MiprunError
from miprun.models.checkpoint_files import CheckpointTensors, ShardWriter
from miprun.models.finite import all_finite

LOADER_ATTRIBUTE = "_miprun_layerwise"


def layerwise_loader(model: Any) -> "BlockLoader | None":
    """The :class:`BlockLoader` of a layer-wise model, None for a model held in memory."""
    return getattr(model, LOADER_ATTRIBUTE, None)


@contextmanager
def editable_block(adapter: Any, index: int) -> Iterator[Any]:
    """Block ``index`` with weights that in-place edits keep: as it is for a model in memory;
    loaded, and its changes kept as overrides, for a layer-wise model."""
    loader = layerwise_loader(adapter.model)
    if loader is None:
        yield adapter.blocks[index]
        return
    with loader.editing(index) as block:
        yield block


def parse_bytes(text: str) -> int:
    """``"200MiB"``, ``"8GB"``, ``"1.5GiB"``, ``"512M"`` or a plain byte count → bytes."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?)B?\s*", str(text), flags=re.IGNORECASE)
    if not found or float(found.group(1)) <= 0:
        raise MiprunError(f"--max-memory '{text}' is not a size; write e.g. 200MiB, 8GB or 1.5GiB")
    number, unit, binary = float(found.group(1)), found.group(2).upper(), found.group(3)
    base = 1024 if binary or not unit else 1000
    return int(number * base ** " KMGT".index(unit or " "))


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class BlockLoader:
    """Loads a layer-wise model's blocks from ``tensors`` onto ``device`` in ``dtype``.

    :ivar block_sources: per current block (by ``id``), the name prefix of its tensors in the
        source checkpoint — it survives re-indexing when blocks are removed.
    :ivar overrides: source tensor name → edited value (CPU), replacing the file's tensor.
    :ivar reads: blocks read from the files so far.
    """

    def __init__(self, model: Any, adapter: Any, tensors: CheckpointTensors, *, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.model = model
        self.adapter = adapter
        self.tensors = tensors
        self.device = torch.device(device)
        self.dtype = dtype
        self.overrides: dict[str, torch.Tensor] = {}
        self.reads = 0
        names = {id(module): name for name, module in model.named_modules()}
        self.block_sources = {id(block): names[id(block)] + "." for block in adapter.blocks}
        self._loaded: set[int] = set()
        self._checked: set[int] = set()
        self._temporary: Any = None
        self._suspended = 0
        for block in adapter.blocks:
            block.register_forward_pre_hook(self._before)
            block.register_forward_hook(self._after)
        setattr(model, LOADER_ATTRIBUTE, self)

    # ----------------------------------------------------------------- one block in, one out

    def _sources(self, block: Any) -> dict[str, str]:
        """Local parameter/buffer name → source tensor name, for what the checkpoint holds."""
        prefix = self.block_sources[id(block)]
        local = [name for name, _ in block.named_parameters()]
        local += [name for name, _ in block.named_buffers() if prefix + name in self.tensors.files]
        return {name: prefix + name for name in local}

    def _values(self, block: Any) -> dict[str, torch.Tensor]:
        """``block``'s tensors by local name: the overrides where there are some, else read from
        the files (one read for the block)."""
        sources = self._sources(block)
        values = self.tensors.read([s for s in sources.values() if s not in self.overrides])
        values.update({s: self.overrides[s] for s in sources.values() if s in self.overrides})
        return {local: values[source] for local, source in sources.items()}

    def _index(self, block: Any) -> int:
        return next(i for i, b in enumerate(self.adapter.blocks) if b is block)

    def load(self, block: Any) -> None:
        """Read ``block``'s tensors (or their overrides) onto the device."""
        from accelerate.utils import set_module_tensor_to_device

        if id(block) in self._loaded:
            return
        first_read = id(block) not in self._checked  # the weights are checked once, on their first read
        for name, value in self._values(block).items():
            if first_read and value.is_floating_point() and not all_finite(value):
                raise MiprunError(f"block {self._index(block)} has non-finite weights (NaN or inf) in {name}: the "
                                  f"checkpoint is damaged; repair or re-download it before pruning")
            set_module_tensor_to_device(block, name, self.device, value=value,
                                        dtype=self.dtype if value.is_floating_point() else None)
        self._checked.add(id(block))
        self._loaded.add(id(block))
        self.reads += 1

    def free(self, block: Any) -> None:
        """Drop ``block``'s weights (back to meta tensors of the same shape)."""
        from accelerate.utils import set_module_tensor_to_device

        if id(block) not in self._loaded:
            return
        for name in self._sources(block):
            set_module_tensor_to_device(block, name, "meta")
        self._loaded.discard(id(block))

    def _before(self, module: Any, args: Any) -> None:
        if self._suspended or id(module) in self._loaded:
            return
        if self._temporary is not None:  # a pass interrupted after loading (an exception in a hook)
            self.free(self._temporary)
        self.load(module)
        self._temporary = module

    def _after(self, module: Any, args: Any, out: Any) -> None:
        if module is self._temporary:
            self.free(module)
            self._temporary = None

    @contextmanager
    def pinned(self, index: int) -> Iterator[Any]:
        """Block ``index`` loaded for the whole ``with`` block (freed after, unless it was already)."""
        block = self.adapter.blocks[index]
        already = id(block) in self._loaded and block is not self._temporary
        if block is self._temporary:
            self._temporary = None
        self.load(block)
        try:
            yield block
        finally:
            if not already:
                self.free(block)

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Within the ``with`` block, running a block does not load it (its forward is replaced)."""
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1

    @contextmanager
    def editing(self, index: int) -> Iterator[Any]:
        """Block ``index`` loaded for in-place edits; what changed is kept as overrides."""
        with self.pinned(index) as block:
            sources = self._sources(block)
            tensors = dict(block.named_parameters())
            versions = {name: tensors[name]._version for name in sources if name in tensors}
            yield block
            for name, version in versions.items():
                if tensors[name]._version != version:
                    self.overrides[sources[name]] = tensors[name].detach().to("cpu").clone()

    # ----------------------------------------------------------------- sizes and saving

    def resident_bytes(self) -> int:
        """Bytes of what stays in memory: every parameter and buffer outside the blocks."""
        seen: set[int] = set()
        total = 0
        for tensor in list(self.model.parameters()) + list(self.model.buffers()):
            if not tensor.is_meta and id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
        return total

    def block_bytes(self) -> int:
        """Bytes of the largest block in the run's dtype."""
        elements = self.tensors.elements()
        size = _element_size(self.dtype)
        return max(sum(elements[s] for s in self._sources(block).values()) * size for block in self.adapter.blocks)

    def save_pretrained(self, directory: Path) -> list[str]:
        """Write what ``save_pretrained`` would — config, generation config, weights — without
        materialising the model: blocks from the source files (or their overrides), the rest from
        memory, one block read at a time, into safetensors shards of about one block each (a shard
        is assembled in memory before it is written, so larger shards would cost more memory)."""
        directory = Path(directory)
        self.model.config.save_pretrained(directory)
        generation = getattr(self.model, "generation_config", None)
        if generation is not None and getattr(self.model, "can_generate", lambda: False)():
            generation.save_pretrained(directory)
        writer = ShardWriter(directory, self.block_bytes())
        owner = {}
        names = {id(module): name for name, module in self.model.named_modules()}
        for block in self.adapter.blocks:
            owner[names[id(block)] + "."] = block
        current: tuple[Any, dict[str, torch.Tensor]] | None = None
        seen: set[int] = set()
        for name, tensor in self.model.state_dict(keep_vars=True).items():
            if id(tensor) in seen:  # a tied weight is stored once, as save_pretrained does
                continue
            seen.add(id(tensor))
            prefix = next((p for p in owner if name.startswith(p)), None)
            if prefix is None:
                writer.add(name, tensor.detach())
                continue
            block = owner[prefix]
            if current is None or current[0] is not block:
                current = (block, self._values(block))
            local = name[len(prefix):]
            if local in current[1]:
                value = current[1][local]
                writer.add(name, value.to(self.dtype) if value.is_floating_point() else value)
        return writer.close()


@dataclass
class Execution:
    """How a run executes the model: ``"in-memory"`` or ``"layerwise"``, and why."""

    mode: str
    reason: str
    max_memory: int | None = None

    def record(self) -> dict[str, Any]:
        """The report's ``execution`` field."""
        return {"mode": self.mode, "reason": self.reason, "max_memory_bytes": self.max_memory}


def choose_execution(spec: str, *, dtype: str, layerwise: bool, max_memory: str | None) -> Execution:
    """Layer-wise when asked, or when the checkpoint's weights exceed ``max_memory``; else in memory."""
    budget = parse_bytes(max_memory) if max_memory is not None else None
    if layerwise:
        return Execution("layerwise", "asked for (--layerwise)", budget)
    if budget is None:
        return Execution("in-memory", "no memory budget given", None)
    need = checkpoint_bytes(checkpoint_directory(spec), dtype)
    if need > budget:
        return Execution("layerwise", f"the weights ({_size(need)}) exceed --max-memory ({_size(budget)})", budget)
    return Execution("in-memory", f"the weights ({_size(need)}) fit --max-memory ({_size(budget)})", budget)


def check_budget(loaded: Any, budget: int | None, stream_elements: int) -> dict[str, int]:
    """What layer-wise execution of ``loaded`` holds — resident weights, the largest block, one
    calibration stream of ``stream_elements`` numbers — checked against ``budget`` (bytes).

    :returns: the three sizes and their sum, in bytes (recorded in the report).
    """
    loader = layerwise_loader(loaded.model)
    parts = {"resident_weights": loader.resident_bytes(), "largest_block": loader.block_bytes(),
             "calibration_stream": stream_elements * _element_size(loader.dtype)}
    parts["total"] = sum(parts.values())
    if budget is not None:
        if parts["total"] > budget:
            raise MiprunError(
                f"layer-wise execution needs about {_size(parts['total'])} (embedding and head "
                f"{_size(parts['resident_weights'])}, one block {_size(parts['largest_block'])}, calibration stream "
                f"{_size(parts['calibration_stream'])}), more than --max-memory {_size(budget)}; raise --max-memory or "
                f"calibrate on fewer or shorter sequences")
    return parts


def _size(count: int) -> str:
    """``count`` bytes for a message: ``512 B``, ``13.5 MiB``, ``1.7 GiB``."""
    if count < 1024:
        return f"{count} B"
    value, unit = float(count), "B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"


def checkpoint_directory(spec: str) -> Path:
    """The local safetensors checkpoint directory for ``spec``: an embedded name, a directory, or
    a hub id (its json, tokenizer and safetensors files downloaded with ``huggingface_hub``)."""
    from miprun.models.embedded import EMBEDDED, embedded_checkpoint
    from miprun.models.loading import looks_like_path

    if spec in EMBEDDED:
        return embedded_checkpoint(spec)
    if looks_like_path(spec):
        path = Path(spec).expanduser()
        if path.suffix == ".gguf":
            raise MiprunError(f"layer-wise execution reads safetensors checkpoints, not GGUF ('{spec}'); run without "
                              f"--layerwise/--max-memory, or save the model with save_pretrained first")
        if not (path / "config.json").is_file():
            raise MiprunError(f"'{spec}' is not a checkpoint directory with config.json")
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as exc:  # network, authentication, unknown repository
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MiprunError(f"cannot fetch '{spec}' from the hub for layer-wise execution: {first}") from None


def checkpoint_bytes(directory: Path, dtype: str) -> int:
    """Bytes the checkpoint's weights take in memory in ``dtype`` (``"auto"``: as stored)."""
    from miprun.options import check_dtype

    tensors = CheckpointTensors(directory)
    if check_dtype(dtype) == "auto":
        return sum(p.stat().st_size for p in set(tensors.files.values()))
    return sum(tensors.elements().values()) * _element_size(getattr(torch, dtype))


def _run_dtype(config: Any, dtype: str) -> torch.dtype:
    from miprun.options import check_dtype

    if check_dtype(dtype) != "auto":
        return getattr(torch, dtype)
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    return stored if isinstance(stored, torch.dtype) else torch.float32


def _checkpoint_name(name: str, available: dict[str, Any], prefix: str) -> str | None:
    """The checkpoint's name for model tensor ``name`` (as is, or with/without the base model's prefix)."""
    for candidate in (name, name.removeprefix(prefix + "."), f"{prefix}.{name}"):
        if candidate in available:
            return candidate
    return None


def _renames(model: Any, directory: Path) -> list[tuple[str, str]]:
    """The renamings transformers applies to ``model``'s checkpoint names on load; a one-line
    error when it also merges tensors (Mixtral's per-expert weights into one), which layer-wise
    execution does not follow."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
    except ImportError:  # transformers without load-time conversions
        return []
    renames: list[tuple[str, str]] = []
    stored = CheckpointTensors(directory).names()
    for transform in get_model_conversion_mapping(model):
        pairs = list(zip(getattr(transform, "source_patterns", []), getattr(transform, "target_patterns", [])))
        if type(transform).__name__ == "WeightRenaming":
            renames += pairs
        elif any(re.search(pattern.replace("*", r"\d+"), name) for pattern, _ in pairs for name in stored):
            raise MiprunError(f"'{model.config.model_type}' checkpoints store tensors that transformers merges on load "
                              f"({pairs[0][0]} → {pairs[0][1]}); layer-wise execution reads tensors as stored and "
                              f"cannot follow that yet — run in memory (without --layerwise/--max-memory)")
    return renames


def load_layerwise(spec: str, *, dtype: str = "auto", device: str = "cpu") -> Any:
    """A :class:`~miprun.models.loading.LoadedModel` whose blocks are read from the checkpoint
    when they run (module docstring); everything else is loaded onto ``device`` now."""
    import time

    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from miprun.memory import return_large_frees
    from miprun.models.adapters import adapter_for
    from miprun.models.embedded import EMBEDDED
    from miprun.models.loading import LoadedModel, check_device_map, looks_like_path

    start = time.perf_counter()
    check_device_map(device)
    return_large_frees()
    directory = checkpoint_directory(spec)
    try:
        config = AutoConfig.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as exc:
        raise MiprunError(f"cannot load model '{spec}': {str(exc).strip().splitlines()[0]}") from None
    run_dtype = _run_dtype(config, dtype)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=run_dtype)
    model.eval()
    tensors = CheckpointTensors(directory, _renames(model, directory))
    adapter = adapter_for(model)
    loader = BlockLoader(model, adapter, tensors, device=torch.device(device), dtype=run_dtype)
    prefix = getattr(model, "base_model_prefix", "model")
    in_blocks = tuple(loader.block_sources.values())
    block_names = [n for n, _ in model.named_parameters() if n.startswith(in_blocks)]
    missing = [n for n in block_names if n not in tensors.files]
    if missing:
        raise MiprunError(f"the checkpoint's tensor names do not match the model's (no '{missing[0]}'); layer-wise "
                          f"execution needs a checkpoint saved by save_pretrained in the model's own layout")
    head_tied = bool(getattr(config, "tie_word_embeddings", False))
    for name, tensor in list(model.state_dict(keep_vars=True).items()):
        if name.startswith(in_blocks) or not tensor.is_meta:
            continue
        source = _checkpoint_name(name, tensors.files, prefix)
        if source is None:
            if head_tied:
                continue  # the tied head, restored by tie_weights below
            raise MiprunError(f"checkpoint '{directory}' has no tensor for '{name}'; it is not a complete checkpoint")
        value = tensors.read([source])[source]
        set_module_tensor_to_device(model, name, device, value=value,
                                    dtype=run_dtype if value.is_floating_point() else None)
    if head_tied:
        model.tie_weights()
    left = [n for n, p in model.named_parameters() if p.is_meta and not n.startswith(in_blocks)]
    if left:
        raise MiprunError(f"checkpoint '{directory}' has no tensor for '{left[0]}'; it is not a complete checkpoint")
    kind = "embedded" if spec in EMBEDDED else "directory" if looks_like_path(spec) else "hub"
    source: dict[str, Any] = {"spec": spec, "kind": kind,
                              "path": str(Path(directory).resolve()), "execution": "layerwise"}
    if spec in EMBEDDED:
        source.update(description=EMBEDDED[spec]["description"], hub_id=EMBEDDED[spec]["hub_id"])
    source["load_seconds"] = round(time.perf_counter() - start, 3)
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter, source=source)
