"""Neuron (width) pruning: load → calibrate → collect → score → select → operate → save, for FFN neurons.

The same five strategy kinds as block pruning, at ``granularity="neuron"``::

    acts = collector.collect(model, adapter, input_ids)        # FFNActivations (ffn-activations)
    scores = scorer.score(acts, estimator)                      # NeuronScores (neuron-mi + a pairwise estimator)
    selection = selector.select(scores, n)                      # NeuronSelection (mds-cluster, mi-threshold, …)
    surgeon.apply(model, adapter, selection.keep)               # slice-ffn

``n`` is the number of neurons removed from *every* FFN layer, so all layers keep the same width and
the saved config stays standard (``intermediate_size``, GPT-2 ``n_inner``): stock ``transformers``
loads the checkpoint. Unequal per-layer counts are refused (see docs/neuron-pruning.md).

Selectors that need no activations (``neuron-magnitude``, ``neuron-random``) declare
``uses_activations = False``; the run then skips collection and scoring.

Load, calibration, report and save are the helpers of :mod:`miprun.pipeline`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from miprun.errors import MiprunError
from miprun.models.embedded import DEFAULT_MODEL
from miprun.pipeline import (
    Plan,
    PruneResult,
    Reporter,
    base_report,
    calibrate_stage,
    check_granularity,
    finish_run,
    load_stage,
    model_slug,
    plan_with_options,
    stage,
)
from miprun.registry import Registry, get_registry
from miprun.strategies import RunContext, call_with_context

NEURON = "neuron"
DEFAULT_NEURON_ESTIMATOR = "neuron-renyi"
DEFAULT_NEURON_SELECTOR = "mds-cluster"
_CACHE_BYTES = 1 << 30
NORMALIZE = ("auto", "self", "none")

# ------------------------------------------------------------------ data flowing between neuron strategies


@dataclass
class FFNActivations:
    """The input of every FFN's down projection (after the activation / gating) for the same token
    positions in every layer: ``acts[i]`` is a (tokens × width) CPU tensor of block ``layers[i]``."""

    layers: list[int]
    acts: list[Any]
    forward_passes: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def widths(self) -> list[int]:
        """FFN width (number of neurons) of every collected layer."""
        return [int(a.shape[1]) for a in self.acts]

    @property
    def num_tokens(self) -> int:
        """Number of token positions kept (the same in every layer)."""
        return int(self.acts[0].shape[0]) if self.acts else 0


class NeuronScores:
    """Pairwise dependence between the neurons of every FFN layer, computed lazily per layer.

    ``pairwise(i)`` is the symmetric (width × width) matrix of layer position ``i`` (block
    ``layers[i]``); higher = more redundant (MI in nats, or |Pearson ρ|). Matrices are cached while
    their total size stays under ``cache_bytes``; beyond that only the last one is kept, so layers
    of 11 008 neurons are handled one at a time. ``seconds[i]`` is the time spent on layer ``i``.

    :param compute: ``compute(i) -> matrix``; None for runs whose selector uses no activations.
    :param self_information: the diagonal holds each neuron's finite self-information I(i; i) (Rényi
        MI; |ρ| = 1), so :meth:`similarity` can normalise by it; False when the diagonal is only a cap
        (Gaussian-copula MI is infinite there).
    """

    def __init__(
        self,
        layers: list[int],
        widths: list[int],
        compute: Callable[[int], Any] | None = None,
        *,
        metric: str = "none",
        activations: FFNActivations | None = None,
        cache_bytes: int = _CACHE_BYTES,
        self_information: bool = False,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.layers = list(layers)
        self.self_information = bool(self_information)
        self.widths = list(widths)
        self.metric = metric
        self.activations = activations
        self.info: dict[str, Any] = dict(info or {})
        self.seconds: dict[int, float] = {}
        self.layer_info: dict[int, dict[str, Any]] = {}
        self._compute = compute
        self._cache: dict[int, Any] = {}
        self._cache_bytes = cache_bytes

    @property
    def num_layers(self) -> int:
        """Number of FFN layers."""
        return len(self.layers)

    @property
    def has_pairwise(self) -> bool:
        """Whether pairwise matrices can be computed (False for weight-only selectors)."""
        return self._compute is not None

    def pairwise(self, index: int) -> Any:
        """The (width × width) dependence matrix of layer position ``index`` (computed once if cached)."""
        if self._compute is None:
            raise MiprunError("this run collected no activations; the selector needs a neuron scorer (neuron-mi)")
        if index in self._cache:
            return self._cache[index]
        start = time.perf_counter()
        matrix = self._compute(index)
        self.seconds[index] = round(self.seconds.get(index, 0.0) + time.perf_counter() - start, 4)
        size = matrix.numel() * matrix.element_size()
        held = sum(m.numel() * m.element_size() for m in self._cache.values())
        if held + size > self._cache_bytes:
            self._cache.clear()
        self._cache[index] = matrix
        return matrix

    def similarity(self, index: int, normalize: str = "auto") -> Any:
        """The matrix of layer ``index`` as selectors compare it.

        ``normalize="self"`` divides by the self-information, s_ij = I_ij / √(I_ii I_jj) (1 on the
        diagonal and for exact copies; 0 off the diagonal for a neuron with I_ii = 0); ``"none"``
        returns the raw values; ``"auto"`` (default) normalises when the diagonal is a
        self-information (:attr:`self_information`) and otherwise returns the raw values.
        """
        if normalize not in NORMALIZE:
            raise MiprunError(f"normalize={normalize!r} must be one of {', '.join(NORMALIZE)}")
        matrix = self.pairwise(index)
        if normalize == "none" or (normalize == "auto" and not self.self_information):
            return matrix
        import torch

        diagonal = matrix.diagonal().to(torch.float64)
        scale = torch.where(diagonal > 1e-12, diagonal, torch.full_like(diagonal, float("inf"))).sqrt()
        out = (matrix.to(torch.float64) / (scale[:, None] * scale[None, :])).to(torch.float32)
        out.fill_diagonal_(1.0)
        return out

    def release(self, index: int) -> None:
        """Drop the cached matrix of layer position ``index``."""
        self._cache.pop(index, None)

    def summary(self) -> dict[str, Any]:
        """Metric, per-layer time (s) and estimator details for the report."""
        per_layer = [self.seconds.get(i) for i in range(self.num_layers)]
        done = [s for s in per_layer if s is not None]
        return {
            "metric": self.metric,
            "layers": self.layers,
            "widths": self.widths,
            "seconds_per_layer": per_layer,
            "mean_seconds_per_layer": round(sum(done) / len(done), 4) if done else None,
            "layer_info": {str(self.layers[i]): v for i, v in sorted(self.layer_info.items())},
            **self.info,
        }


@dataclass
class NeuronSelection:
    """What a neuron selector chose: the kept neuron indices of every FFN layer (block index → sorted
    list, original numbering), and how it got there."""

    keep: dict[int, list[int]]
    evaluations: int = 0
    trace: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    merges: dict[int, list[tuple[int, int, float]]] | None = None
    """Optional compensation: per layer, ``(removed j, kept k, β)`` — the surgeon adds β × neuron j's
    down-projection weights to neuron k's (``mds-cluster merge=True``)."""

    def removed(self, widths: dict[int, int]) -> dict[int, list[int]]:
        """Removed neuron indices per layer, given each layer's original width."""
        return {layer: sorted(set(range(widths[layer])) - set(kept)) for layer, kept in self.keep.items()}


def check_selection(selection: NeuronSelection, layers: list[int], widths: list[int], count: int) -> None:
    """Every layer keeps ``width − count`` distinct, in-range neurons; otherwise a MiprunError."""
    for layer, width in zip(layers, widths):
        kept = selection.keep.get(layer)
        if kept is None:
            raise MiprunError(f"the selector returned no neurons for layer {layer}")
        if len(set(kept)) != len(kept) or any(not 0 <= k < width for k in kept):
            raise MiprunError(f"the selector returned invalid neuron indices for layer {layer}")
        if len(kept) != width - count:
            raise MiprunError(
                f"the selector kept {len(kept)} neurons in layer {layer}, expected {width - count}; "
                f"miprun saves standard checkpoints, which need the same FFN width in every layer"
            )


def accepts_merges(method: Any) -> bool:
    """Whether a surgeon's ``apply`` takes the optional ``merges`` keyword."""
    import inspect

    try:
        return "merges" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------ counts and plan


def neurons_to_remove(widths: list[int], n: int | None, ratio: float | None) -> int:
    """Neurons to remove from every FFN layer, from ``n`` or ``ratio`` (default 0.2) of the width."""
    if not widths:
        raise MiprunError("the model has no FFN layers to prune")
    if len(set(widths)) != 1:
        raise MiprunError(
            f"FFN widths differ between layers ({min(widths)}–{max(widths)}); neuron pruning needs one "
            f"intermediate size so the pruned checkpoint stays standard"
        )
    width = widths[0]
    if n is not None and ratio is not None:
        raise MiprunError("give either --prune N or --ratio r, not both")
    if n is None:
        ratio = 0.2 if ratio is None else ratio
        if not 0 < ratio < 1:
            raise MiprunError(f"--ratio must be between 0 and 1 (exclusive), got {ratio}")
        n = max(1, round(ratio * width))
    if n < 1:
        raise MiprunError(f"--prune must be at least 1, got {n}")
    if n >= width:
        raise MiprunError(f"--prune {n} would remove every FFN neuron: layers have {width}; choose at most {width - 1}")
    return n


def resolve_neuron_plan(
    *,
    collector: str | None = None,
    estimator: str | None = None,
    scorer: str | None = None,
    selector: str | None = None,
    surgeon: str | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    registry: Registry | None = None,
) -> Plan:
    """Fill in the neuron defaults and check every name and its granularity before any work starts.

    Defaults: selector ``mds-cluster``; for selectors that use activations, collector
    ``ffn-activations``, scorer ``neuron-mi`` and estimator ``neuron-renyi``; surgeon ``slice-ffn``.
    Block names with a ``neuron-`` counterpart resolve to it (``renyi`` → ``neuron-renyi``). A
    selector that uses no activations (``neuron-magnitude``, ``neuron-random``) runs without
    collector, scorer and estimator; naming one for it is an error.
    """
    registry = registry or get_registry()
    options = options or {}
    selector = check_granularity(registry, "selector", selector or DEFAULT_NEURON_SELECTOR, NEURON)
    uses_activations = getattr(registry.get("selector", selector).load_factory(), "uses_activations", True)
    names: dict[str, str] = {}
    if uses_activations:
        names["collector"] = check_granularity(registry, "collector", collector or "ffn-activations", NEURON)
        names["scorer"] = check_granularity(registry, "scorer", scorer or "neuron-mi", NEURON)
        scorer_factory = registry.get("scorer", names["scorer"]).load_factory()
        if estimator is not None or getattr(scorer_factory, "needs_estimator", False) or "estimator" in options:
            names["estimator"] = check_granularity(registry, "estimator", estimator or DEFAULT_NEURON_ESTIMATOR, NEURON)
    else:
        given = {k: v for k, v in {"collector": collector, "scorer": scorer, "estimator": estimator}.items()
                 if v is not None and not (k == "collector" and v == "ffn-activations")}
        if given:
            raise MiprunError(
                f"selector '{selector}' uses no activations, so this run has no "
                f"{', '.join(given)}; drop --{' and --'.join(given)}"
            )
    names["selector"] = selector
    names["surgeon"] = check_granularity(registry, "surgeon", surgeon or "slice-ffn", NEURON)
    return plan_with_options(registry, names, options, seed)


def default_neuron_output(model: str, plan: Plan, kept: int) -> Path:
    """``pruned/<model>-<estimator or selector>-<selector>-ffn<kept width>``."""
    method = plan.names.get("estimator", plan.names["selector"]).removeprefix("neuron-")
    selector = plan.names["selector"]
    prefix = f"{method}-{selector}" if method != selector else selector
    return Path("pruned") / f"{model_slug(model)}-{prefix}-ffn{kept}"


# ------------------------------------------------------------------ the run


def prune_neurons(
    model: Any = DEFAULT_MODEL,
    *,
    n: int | None = None,
    ratio: float | None = None,
    calib: str = "wikitext2",
    num_samples: int = 16,
    seq_len: int = 256,
    seed: int = 0,
    collector: str | None = None,
    estimator: str | None = None,
    scorer: str | None = None,
    selector: str | None = None,
    surgeon: str | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    output: str | Path | None = None,
    save: bool = True,
    overwrite: bool = False,
    dtype: str = "auto",
    device_map: str | None = None,
    evaluate: dict[str, Any] | None = None,
    reporter: Reporter | None = None,
) -> PruneResult:
    """Remove ``n`` (or ``ratio`` of the) FFN neurons from every layer of ``model``.

    Arguments as :func:`miprun.pipeline.prune`; the defaults are described in
    :func:`resolve_neuron_plan`. The result's ``selection`` is a :class:`NeuronSelection` and its
    ``scores`` a :class:`NeuronScores`.
    """
    from miprun.models.adapters import ffn_widths
    from miprun.output import check_output

    reporter = reporter or Reporter()
    registry = get_registry()
    plan = resolve_neuron_plan(collector=collector, estimator=estimator, scorer=scorer, selector=selector,
                               surgeon=surgeon, options=options, seed=seed, registry=registry)
    if output is not None and save:
        check_output(Path(output), overwrite=overwrite)
    strategies = {kind: registry.create(kind, name, **plan.options[kind]) for kind, name in plan.names.items()}
    timings: dict[str, float] = {}

    loaded = load_stage(model, dtype=dtype, device_map=device_map, timings=timings, reporter=reporter)
    layers = list(range(loaded.adapter.num_blocks))
    widths = ffn_widths(loaded.adapter)
    count = neurons_to_remove(widths, n, ratio)
    out_path = Path(output) if output is not None else default_neuron_output(
        loaded.source.get("spec", str(model)), plan, widths[0] - count)
    if save:
        check_output(out_path, overwrite=overwrite)

    calibration = calibrate_stage(loaded, calib=calib, num_samples=num_samples, seq_len=seq_len, seed=seed,
                                  timings=timings, reporter=reporter)
    acts: FFNActivations | None = None
    if "collector" in strategies:
        with stage("collect", timings, reporter, total=num_samples):
            acts = strategies["collector"].collect(
                loaded.model, loaded.adapter, calibration.input_ids, progress=reporter.advance
            )
    context = RunContext(loaded.model, loaded.adapter, calibration.input_ids, loaded.tokenizer, seed,
                         forward_passes=acts.forward_passes if acts is not None else 0)
    with stage("estimate", timings, reporter):
        if "scorer" in strategies:
            scores = call_with_context(strategies["scorer"].score, acts, strategies.get("estimator"), context=context)
        else:
            scores = NeuronScores(layers, widths)
    with stage("select", timings, reporter):
        selection = call_with_context(strategies["selector"].select, scores, count, context=context)
    check_selection(selection, layers, widths, count)
    with stage("operate", timings, reporter):
        surgeon = strategies["surgeon"]
        if selection.merges and accepts_merges(surgeon.apply):
            surgery = surgeon.apply(loaded.model, loaded.adapter, selection.keep, merges=selection.merges)
        elif selection.merges:
            raise MiprunError(f"the selection asks to merge neurons, which surgeon '{plan.names['surgeon']}' cannot do")
        else:
            surgery = surgeon.apply(loaded.model, loaded.adapter, selection.keep)

    width_of = dict(zip(layers, widths))
    report = base_report(loaded, calibration, seed=seed, plan=plan, registry=registry)
    report.update({
        "granularity": NEURON,
        "prune": {"neurons_per_layer": count, "of_width": widths[0], "layers": len(layers),
                  "ratio": round(count / widths[0], 6)},
        "removed_neurons": {str(k): v for k, v in selection.removed(width_of).items()},
        "neuron_scores": scores.summary(),
        "evaluations": {"selector": selection.evaluations, "forward_passes": context.forward_passes},
        "collection": acts.info if acts is not None else None,
        "selection": {"trace": selection.trace, "info": selection.info},
        "surgery": surgery,
    })
    result = PruneResult(loaded.model, loaded.tokenizer, loaded.adapter, selection, scores, report, timings=timings)
    return finish_run(result, evaluate=evaluate, save=save, out_path=out_path, overwrite=overwrite, reporter=reporter)
