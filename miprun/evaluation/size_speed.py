"""Model size and speed (the paper's Table 2): parameters, checkpoint size, prefill latency and
decode throughput, dense vs pruned, with the ideal speed-up T/(T−N) of removing N of T blocks.

Timings are the median of ``repeats`` runs after ``warmup`` runs, on random token ids (seeded),
under ``torch.inference_mode``. Prefill: one forward of a batch of 1 × ``prefill_len`` tokens
without cache. Decode: ``decode_batch`` sequences, a ``decode_prompt``-token prompt is prefilled
with the KV cache (not timed), then ``decode_tokens`` single-token greedy steps are timed;
throughput = ``decode_batch × decode_tokens / time``. A model whose context is shorter than these
lengths is measured at lengths cut to fit it (:func:`fitted_to_context`; the report's ``config``
says which were used).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from miprun.models.context import context_length
from miprun.models.devices import input_device, output_head

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass
class SpeedConfig:
    """How latency and throughput are measured (defaults sized for a CPU)."""

    prefill_len: int = 512
    decode_batch: int = 8
    decode_prompt: int = 32
    decode_tokens: int = 32
    warmup: int = 1
    repeats: int = 5
    seed: int = 0

    def to_dict(self) -> dict[str, int]:
        """JSON-serialisable form."""
        return asdict(self)


def _blocks(model: Any, adapter: Any = None):
    if adapter is None:
        from miprun.models.adapters import adapter_for

        adapter = adapter_for(model)
    return adapter.blocks


def parameter_counts(model: Any, adapter: Any = None) -> dict[str, Any]:
    """Parameters in total and per component.

    ``embeddings`` is the input embedding matrix, ``blocks`` the sum over transformer blocks,
    ``head`` the output projection when it is *not* tied to the embeddings (0 when tied),
    ``other`` the rest (final norm, …). ``per_forward_token`` counts the parameters a forward pass
    touches per token: all of ``blocks`` and ``other``, the full output projection (tied or not),
    and one embedding row (``hidden_size``) instead of the whole embedding matrix.
    """
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    embedding = model.get_input_embeddings().weight
    head_module = output_head(model)
    head_weight = getattr(head_module, "weight", None) if head_module is not None else None
    tied = head_weight is not None and head_weight is embedding
    head_params = {} if head_module is None else {id(p): p for p in head_module.parameters()}
    blocks = _blocks(model, adapter)
    block_params = {id(p): p for block in blocks for p in block.parameters()}
    n_embed = embedding.numel()
    n_blocks = sum(p.numel() for p in block_params.values())
    n_head = 0 if tied else sum(p.numel() for pid, p in head_params.items() if pid != id(embedding))
    n_other = total - n_embed - n_blocks - n_head
    head_matmul = head_weight.numel() if head_weight is not None else 0
    hidden = embedding.shape[-1]
    return {
        "total": total,
        "embeddings": n_embed,
        "blocks": n_blocks,
        "per_block": n_blocks // len(blocks) if len(blocks) else 0,
        "num_blocks": len(blocks),
        "head": n_head,
        "tied_head": tied,
        "other": n_other,
        "per_forward_token": n_blocks + n_other + (head_matmul if tied else n_head) + hidden,
    }


def checkpoint_size(path: str | Path | None) -> int | None:
    """Bytes of weight files (safetensors, bin, pt, gguf) at ``path`` (file or directory), or None."""
    if not path:
        return None
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return None
    files = [f for f in path.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)]
    return sum(f.stat().st_size for f in files) if files else None


def _median_time(fn: Callable[[], None], warmup: int, repeats: int) -> tuple[float, list[float]]:
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def _random_ids(model: Any, batch: int, length: int, seed: int):
    import torch

    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(seed)
    device = input_device(model)
    return torch.randint(0, vocab, (batch, length), generator=generator).to(device)


def fitted_to_context(model: Any, config: SpeedConfig) -> SpeedConfig:
    """``config`` with its lengths cut to ``model``'s context where they exceed it (a model with 128
    positions cannot prefill 512 tokens): the prefill to the context, the decode prompt to half of
    it at most and the decode steps to what is left."""
    limit = context_length(model)
    if limit is None or (config.prefill_len <= limit and config.decode_prompt + config.decode_tokens <= limit):
        return config
    prompt = min(config.decode_prompt, max(1, limit // 2))
    return replace(config, prefill_len=min(config.prefill_len, limit), decode_prompt=prompt,
                   decode_tokens=max(1, min(config.decode_tokens, limit - prompt)))


def prefill_latency(model: Any, config: SpeedConfig | None = None) -> dict[str, Any]:
    """Median seconds of one forward pass over 1 × ``prefill_len`` tokens (no KV cache; fewer where
    the model's context is shorter: :func:`fitted_to_context`)."""
    import torch

    config = fitted_to_context(model, config or SpeedConfig())
    ids = _random_ids(model, 1, config.prefill_len, config.seed)

    def run() -> None:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)

    median, times = _median_time(run, config.warmup, config.repeats)
    return {
        "tokens": config.prefill_len,
        "seconds": median,
        "tokens_per_second": config.prefill_len / median,
        "runs": [round(t, 6) for t in times],
    }


def _cache_keyword(model: Any) -> str:
    """``cache`` (transformers ≥ 5.2x) or ``past_key_values`` (older), whichever forward takes."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returned_cache(output: Any) -> Any:
    for name in ("cache", "past_key_values"):
        value = output.get(name) if hasattr(output, "get") else getattr(output, name, None)
        if value is not None:
            return value
    raise RuntimeError("the model returned no KV cache; decode throughput needs use_cache=True support")


def decode_throughput(model: Any, config: SpeedConfig | None = None) -> dict[str, Any]:
    """Median decode throughput (tokens/s) of ``decode_batch`` sequences over ``decode_tokens``
    greedy steps with the KV cache, after an untimed prefill of ``decode_prompt`` tokens (both cut to
    the model's context: :func:`fitted_to_context`)."""
    import torch

    config = fitted_to_context(model, config or SpeedConfig())
    prompt = _random_ids(model, config.decode_batch, config.decode_prompt, config.seed)
    keyword = _cache_keyword(model)

    def prefill():
        with torch.inference_mode():
            out = model(input_ids=prompt, use_cache=True)
        return _returned_cache(out), out.logits[:, -1:].argmax(-1)

    def steps(state) -> None:
        past, token = state
        with torch.inference_mode():
            for _ in range(config.decode_tokens):
                out = model(input_ids=token, use_cache=True, **{keyword: past})
                past, token = _returned_cache(out), out.logits[:, -1:].argmax(-1)

    for _ in range(config.warmup):
        steps(prefill())
    times = []
    for _ in range(max(1, config.repeats)):
        state = prefill()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        steps(state)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    generated = config.decode_batch * config.decode_tokens
    return {
        "batch": config.decode_batch,
        "new_tokens": config.decode_tokens,
        "seconds": median,
        "tokens_per_second": generated / median,
        "runs": [round(t, 6) for t in times],
    }


def model_size(model: Any, adapter: Any = None, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Parameter counts, bytes of the parameters in memory, and the checkpoint size on disk."""
    unique = {id(p): p for p in model.parameters()}
    return {
        "parameters": parameter_counts(model, adapter),
        "memory_bytes": sum(p.numel() * p.element_size() for p in unique.values()),
        "dtype": str(next(iter(unique.values())).dtype).replace("torch.", ""),
        "checkpoint_bytes": checkpoint_size(checkpoint),
    }


def speed(model: Any, config: SpeedConfig | None = None) -> dict[str, Any]:
    """Prefill latency and decode throughput (see the module docstring for the protocol)."""
    import torch

    config = fitted_to_context(model, config or SpeedConfig())
    return {
        "config": config.to_dict(),
        "device": str(input_device(model)),
        "threads": torch.get_num_threads(),
        "prefill": prefill_latency(model, config),
        "decode": decode_throughput(model, config),
    }


def compare(dense: dict[str, Any], pruned: dict[str, Any]) -> dict[str, Any]:
    """Dense vs pruned from two :func:`evaluate` reports (their ``size``/``speed`` sections).

    Ideal speed-up is ``T / (T − N)`` for N of T blocks removed (what block removal can give if
    time is proportional to depth); measured speed-ups are dense time / pruned time.
    """
    out: dict[str, Any] = {}
    d_size, p_size = dense.get("size"), pruned.get("size")
    if d_size and p_size:
        t = d_size["parameters"]["num_blocks"]
        n = t - p_size["parameters"]["num_blocks"]
        out["blocks"] = {"dense": t, "pruned": t - n, "removed": n}
        out["ideal_speedup"] = t / (t - n) if t - n > 0 else None
        dp, pp = d_size["parameters"]["total"], p_size["parameters"]["total"]
        out["parameters"] = {"dense": dp, "pruned": pp, "ratio": pp / dp if dp else None}
        dc, pc = d_size.get("checkpoint_bytes"), p_size.get("checkpoint_bytes")
        if dc and pc:
            out["checkpoint_bytes"] = {"dense": dc, "pruned": pc, "ratio": pc / dc}
    d_speed, p_speed = dense.get("speed"), pruned.get("speed")
    if d_speed and p_speed:
        out["prefill_speedup"] = d_speed["prefill"]["seconds"] / p_speed["prefill"]["seconds"]
        out["decode_speedup"] = p_speed["decode"]["tokens_per_second"] / d_speed["decode"]["tokens_per_second"]
    return out
