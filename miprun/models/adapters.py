"""Architecture adapters: where a model keeps its blocks and which config fields describe them.

An adapter is the only place that reads an architecture's layout (an
:class:`~miprun.contracts.ArchitectureSpec`, registered for a ``config.model_type`` through the
``miprun_register_architectures`` hook). Everything else (collectors, surgeons, evaluation) goes
through :func:`adapter_for`, so supporting a new architecture means registering one spec — from
a plugin, or in :mod:`miprun.builtins`.
"""

from __future__ import annotations

import math
from typing import Any

from miprun.contracts import ArchitectureSpec
from miprun.errors import MiprunError


def _resolve(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _resolve_first(block: Any, names: str) -> tuple[str, Any]:
    """``(name, module)`` for the first of ``names`` (alternatives separated by ``|``, for hybrid
    families whose blocks differ) that ``block`` has; AttributeError when it has none."""
    for name in names.split("|"):
        try:
            return name, _resolve(block, name)
        except AttributeError:
            continue
    raise AttributeError(f"block has none of {names}")


def _norm(block: Any, names: str) -> Any:
    """The norm at ``names`` in ``block``, or None where none is registered or the config switched
    it off (an ``nn.Identity`` in its place)."""
    if not names:
        return None
    import torch

    module = _resolve_first(block, names)[1]
    return None if isinstance(module, torch.nn.Identity) else module


class ArchitectureAdapter:
    """Gives uniform access to a model's blocks and the config fields that describe them."""

    def __init__(self, model: Any, spec: ArchitectureSpec, model_type: str) -> None:
        self.model = model
        self.spec = spec
        self.model_type = model_type
        for path in spec.blocks:
            try:
                blocks = _resolve(model, path)
            except AttributeError:
                continue
            self.blocks_path = path
            self.blocks = blocks
            break
        else:
            raise MiprunError(
                f"model of type '{model_type}' ({type(model).__name__}) has none of the block lists "
                f"{', '.join(spec.blocks)}; load it with AutoModelForCausalLM"
            )

    @property
    def num_blocks(self) -> int:
        """Number of blocks T."""
        return len(self.blocks)

    @property
    def block_config(self) -> Any:
        """The (sub-)config that holds ``num_hidden_layers``."""
        return _resolve(self.model.config, self.spec.config) if self.spec.config else self.model.config

    @property
    def backbone(self) -> Any:
        """The module that runs embeddings and blocks without the language-model head."""
        base = getattr(self.model, "base_model", None)
        return base if base is not None else self.model

    @property
    def hidden_size(self) -> int:
        """The width of the residual stream the blocks pass on: the config's ``hidden_size``, or
        the token embedding's width where the config names it otherwise."""
        return getattr(self.block_config, "hidden_size", None) or self.model.get_input_embeddings().embedding_dim

    def keep_blocks(self, keep: list[int]) -> None:
        """Keep only blocks ``keep`` (original indices, ascending) and make the model consistent:
        re-index per-layer state (``layer_idx``), slice per-layer config lists, renumber layer-index
        lists, update the count."""
        import torch

        config = self.block_config
        for field_name in self.spec.period_fields:
            period = getattr(config, field_name, 1)
            if period not in (None, 1):
                raise MiprunError(f"'{self.model_type}' gives its layers their kind every {period} layers "
                                  f"({field_name}={period}): removing blocks would change the kind of the kept ones; "
                                  f"miprun removes blocks only when it is 1")

        kinds = getattr(config, "layer_types", None)
        if isinstance(kinds, (list, tuple)) and len(kinds) == self.num_blocks and keep \
                and all(kinds[i] in STATE_ONLY_KINDS for i in keep) and any(kind not in STATE_ONLY_KINDS for kind in kinds):
            left = " and ".join(sorted({STATE_ONLY_KINDS[kinds[i]] for i in keep}))
            raise MiprunError(f"removing these blocks would leave '{self.model_type}' with {left} blocks only, "
                              f"which transformers cannot run with a cache; keep at least one attention block "
                              f"(blocks {', '.join(str(i) for i, kind in enumerate(kinds) if kind not in STATE_ONLY_KINDS)})")
        last_indices = {}  # checked before anything changes, so that a refusal leaves the model whole
        for field_name in self.spec.last_index_fields:
            last = getattr(config, field_name, None)
            if isinstance(last, int) and last >= 0:
                at_or_before = sum(1 for i in keep if i <= last)
                if at_or_before == 0:
                    raise MiprunError(f"removing these blocks would leave '{self.model_type}' no block at or before "
                                      f"{field_name}={last}, which its config cannot express; keep one of blocks 0–{last}")
                last_indices[field_name] = at_or_before - 1
        kept = [self.blocks[i] for i in keep]
        owner_path, _, attr = self.blocks_path.rpartition(".")
        owner = _resolve(self.model, owner_path) if owner_path else self.model
        setattr(owner, attr, torch.nn.ModuleList(kept))
        self.blocks = getattr(owner, attr)
        for new_index, block in enumerate(self.blocks):
            for module in block.modules():
                for name in LAYER_INDEX_ATTRIBUTES:
                    if hasattr(module, name):
                        setattr(module, name, new_index)
        for field_name in self.spec.layer_index_fields:
            values = getattr(config, field_name, None)
            if isinstance(values, (list, tuple)):
                setattr(config, field_name, [keep.index(i) for i in values if i in keep])
        for field_name in self.spec.prefix_count_fields:
            count = getattr(config, field_name, None)
            if isinstance(count, int):
                setattr(config, field_name, sum(1 for i in keep if i < count))
        for field_name in self.spec.per_layer_fields:
            values = getattr(config, field_name, None)
            if isinstance(values, (list, tuple)) and len(values) >= max(keep, default=-1) + 1:
                setattr(config, field_name, [values[i] for i in keep])
        for field_name, value in last_indices.items():
            setattr(config, field_name, value)
        for field_name in self.spec.run_length_fields:
            runs = getattr(config, field_name, None)
            if isinstance(runs, (list, tuple)):
                setattr(config, field_name, kept_runs(runs, keep))
        if self.spec.depth_scale and isinstance(getattr(config, self.spec.depth_scale, None), (int, float)):
            setattr(config, self.spec.depth_scale,
                    getattr(config, self.spec.depth_scale) * math.sqrt(len(keep) / config.num_hidden_layers))
        config.num_hidden_layers = len(keep)


    # -------------------------------------------------------------- FFN access (width pruning)

    def ffn_modules(self, index: int) -> tuple[list[Any], Any]:
        """The FFN of block ``index``: ``(producers, down)`` — the modules whose outputs are the FFN
        neurons (gate/up, ``c_fc``, ``intermediate.dense``) and the down projection that reads them."""
        if not self.spec.ffn:
            raise MiprunError(
                f"neuron pruning is not supported for '{self.model_type}'"
                f"{': ' + self.spec.ffn_note if self.spec.ffn_note else ''}; prune blocks instead (--granularity block)"
            )
        block = self.blocks[index]
        try:
            modules = [_resolve(block, name) for name in self.spec.ffn]
        except AttributeError as exc:
            raise MiprunError(
                f"block {index} of '{self.model_type}' has no FFN modules {', '.join(self.spec.ffn)} ({exc})"
            ) from None
        return modules[:-1], modules[-1]

    def ffn_width(self, index: int) -> int:
        """Number of FFN neurons of block ``index`` (the down projection's input size)."""
        _, down = self.ffn_modules(index)
        return ffn_in_features(down)

    def set_ffn_width(self, width: int) -> None:
        """Record a common FFN width in the config (``intermediate_size`` / ``n_inner``, with the
        family's :attr:`~miprun.contracts.ArchitectureSpec.ffn_size_settings`)."""
        setattr(self.block_config, self.spec.ffn_size_field, int(width))
        for field_name, value in self.spec.ffn_size_settings:
            setattr(self.block_config, field_name, value)


STATE_ONLY_KINDS = {"linear_attention": "linear-attention", "conv": "short-convolution"}
"""``layer_types`` values of blocks that keep a recurrent state and no key/value cache (Qwen3.5's
Gated DeltaNet, LFM2's short convolutions), with their names in messages: transformers' hybrid
caches need at least one attention block beside them."""

LAYER_INDEX_ATTRIBUTES = ("layer_idx", "layer_id")
"""Attributes by which a block's modules know their position (the key of their cache entry):
renumbered to the kept blocks' new positions (``layer_id``: GPT-Neo's)."""


def kept_runs(runs: list | tuple, keep: list[int]) -> list[list]:
    """Per-layer values given as runs ``[[pattern, repeats], …]`` (GPT-Neo's ``attention_types``)
    restricted to the layers ``keep``, as runs again: consecutive kept layers of one value are one
    run ``[[value], count]``."""
    expanded = [value for pattern, repeats in runs for _ in range(int(repeats)) for value in pattern]
    out: list[list] = []
    for value in (expanded[i] for i in keep):
        if out and out[-1][0] == [value]:
            out[-1][1] += 1
        else:
            out.append([[value], 1])
    return out


def ffn_output_modules(adapter: ArchitectureAdapter, index: int) -> tuple[Any, Any]:
    """``(output, norm)`` of block ``index``: the module whose output the FFN adds to the stream
    (:attr:`ArchitectureSpec.ffn_output`) and the norm applied to it first, or None."""
    block = adapter.blocks[index]
    if not adapter.spec.ffn_output:
        raise MiprunError(f"'{adapter.model_type}' registers no FFN output to fold a healing fit into (its blocks "
                          f"normalise after the residual add); run with --heal none")
    try:
        output = _resolve_first(block, adapter.spec.ffn_output)[1]
    except AttributeError:
        raise MiprunError(f"block {index} of '{adapter.model_type}' has no FFN output module "
                          f"'{adapter.spec.ffn_output}'; register its layout (ArchitectureSpec.ffn_output)") from None
    return output, _norm(block, adapter.spec.ffn_output_norm)


def ffn_output_parts(adapter: ArchitectureAdapter, index: int) -> list[Any]:
    """The modules a map on block ``index``'s FFN output is folded into: the parts of the output
    module that the block has (:attr:`ArchitectureSpec.ffn_output_parts`), or the module itself."""
    output, _ = ffn_output_modules(adapter, index)
    parts = []
    for name in adapter.spec.ffn_output_parts:
        try:
            parts.append(_resolve(output, name))
        except AttributeError:
            continue
    if adapter.spec.ffn_output_parts and not parts:
        raise MiprunError(f"block {index} of '{adapter.model_type}' has none of the FFN output parts "
                          f"{', '.join(adapter.spec.ffn_output_parts)}; register its layout (ArchitectureSpec.ffn_output_parts)")
    return parts or [output]


def attention_output_modules(adapter: ArchitectureAdapter, index: int) -> tuple[Any, Any] | None:
    """``(output, norm)`` of block ``index``: the linear layer whose output the attention adds to the
    stream (:attr:`ArchitectureSpec.attention_output`) and the norm applied to it first, or None;
    None when the family registers no attention output, the config makes the blocks parallel
    (:attr:`ArchitectureSpec.parallel_fields`) or the block lacks it."""
    named = attention_output_name(adapter, index)
    if named is None:
        return None
    block = adapter.blocks[index]
    try:
        return _resolve(block, named), _norm(block, adapter.spec.attention_output_norm)
    except AttributeError:
        return None


def attention_output_name(adapter: ArchitectureAdapter, index: int) -> str | None:
    """The name, inside block ``index``, of its attention output (the alternative it has, for hybrid
    families), or None where :func:`attention_output_modules` gives None."""
    if not adapter.spec.attention_output or parallel_field(adapter):
        return None
    try:
        return _resolve_first(adapter.blocks[index], adapter.spec.attention_output)[0]
    except AttributeError:
        return None


def parallel_field(adapter: ArchitectureAdapter) -> str | None:
    """The first of the family's :attr:`~ArchitectureSpec.parallel_fields` that the model's config
    sets true (its attention and FFN then read the same input), or None."""
    return next((name for name in adapter.spec.parallel_fields if getattr(adapter.block_config, name, False)), None)


def residual_scale(adapter: ArchitectureAdapter) -> float:
    """The factor by which the model's blocks scale what their attention and FFN add to the stream
    (:attr:`~ArchitectureSpec.residual_scale`; 1 for most families)."""
    config = adapter.block_config
    if adapter.spec.depth_scale:
        return float(getattr(config, adapter.spec.depth_scale)) / math.sqrt(config.num_hidden_layers)
    name = adapter.spec.residual_scale
    return float(getattr(config, name, 1.0) or 1.0) if name else 1.0


def neuron_axis(module: Any, role: str) -> int:
    """The weight axis that indexes FFN neurons: ``role="producer"`` (gate/up/c_fc/intermediate)
    or ``"down"``. ``nn.Linear`` stores (out × in), GPT-2's ``Conv1D`` the transpose (in × out)."""
    linear = hasattr(module, "in_features")
    if role == "producer":
        return 0 if linear else 1
    if role == "down":
        return 1 if linear else 0
    raise ValueError(f"role must be 'producer' or 'down', got {role!r}")


def neuron_index(module: Any, role: str, width: int, neurons: Any) -> Any:
    """Indices along ``module``'s neuron axis (:func:`neuron_axis`) that hold ``neurons`` (a long
    tensor) of an FFN ``width`` neurons wide: the neurons themselves, or, for a fused producer whose
    axis holds k × ``width`` entries (Phi-3's and GLM's ``gate_up_proj``: gate and up stacked, split
    with ``chunk``), the same neurons in each of its k contiguous chunks."""
    import torch

    size = module.weight.shape[neuron_axis(module, role)]
    if size == width:
        return neurons
    if role != "producer" or size % width:
        raise MiprunError(f"an FFN projection has {size} entries along its neuron axis for {width} neurons; "
                          f"register its layout (ArchitectureSpec.ffn)")
    return torch.cat([neurons + chunk * width for chunk in range(size // width)])


def ffn_in_features(module: Any) -> int:
    """Input size of a down projection: ``nn.Linear.in_features`` or GPT-2 ``Conv1D`` (weight in × out)."""
    if hasattr(module, "in_features"):
        return int(module.in_features)
    return int(module.weight.shape[0])


def ffn_widths(adapter: ArchitectureAdapter) -> list[int]:
    """FFN width of every block, in block order."""
    return [adapter.ffn_width(i) for i in range(adapter.num_blocks)]


def adapter_for(model: Any) -> ArchitectureAdapter:
    """Return the adapter for ``model``; an unregistered architecture is a one-line error."""
    from miprun.registry import get_registry

    model_type = getattr(model.config, "model_type", None)
    try:
        spec = get_registry().architecture(model_type)
    except MiprunError as exc:
        alike = layout_matches(model)
        if not alike:
            raise
        raise MiprunError(f"{exc}; its modules are laid out as registered for {', '.join(alike[:3])}: if its blocks "
                          f"add their attention and FFN outputs to the stream as those do, a plugin registers it with "
                          f"the same ArchitectureSpec") from None
    return ArchitectureAdapter(model, spec, model_type)


def layout_matches(model: Any) -> list[str]:
    """The registered model types whose layout ``model``'s modules have in every block (block list,
    FFN projections, the outputs and norms healing folds into), most specific first (more of the
    registered names found; a residual scale, which no module shows, last), in registration order:
    a hint for registering an unsupported type."""
    from miprun.registry import get_registry

    scored = []
    for order, (name, entry) in enumerate(get_registry().architectures.items()):
        spec = entry.spec
        paths = [p for p in (*spec.ffn, spec.ffn_output, spec.ffn_output_norm, spec.attention_output,
                             spec.attention_output_norm) if p]
        try:
            adapter = ArchitectureAdapter(model, spec, name)
            for block in adapter.blocks:
                for path in paths:
                    _resolve_first(block, path)
        except (MiprunError, AttributeError):
            continue
        scored.append((-len(paths) + (1 if spec.residual_scale else 0), order, name))
    return [name for *_, name in sorted(scored)]