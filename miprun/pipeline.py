"""``miprun.prune``: load → calibrate → (engine: collect → score → select → operate) → evaluate → save.

:func:`prune` resolves a plan by name (:mod:`miprun.plans`), loads the model, draws the
calibration tokens, hands both to the engine (:func:`miprun.engine.execute`) and writes the
checkpoint with its report. The CLI's ``miprun run`` is a thin shell over it, so everything the
command does is available from Python::

    import miprun
    result = miprun.prune("smollm2-135m", n=6, output="pruned/smollm2-6")
    result.selection.blocks

``granularity="block"`` (the default) removes whole blocks; ``granularity="neuron"`` removes FFN
neurons — the same engine, with the specifics of :mod:`miprun.granularity`.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miprun.errors import MiprunError
from miprun.models.embedded import DEFAULT_MODEL
from miprun.plans import resolve_plan
from miprun.progress import Reporter, stage
from miprun.registry import get_registry


@dataclass
class PruneResult:
    """Everything a run produced: the pruned model in memory, the selection, scores and report."""

    model: Any
    tokenizer: Any
    adapter: Any
    selection: Any
    scores: Any
    report: dict[str, Any]
    output: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)


def load_stage(model: Any, *, dtype: str, device_map: str | None, timings: dict[str, float], reporter: Reporter,
               layerwise: bool = False, device: str = "cpu") -> Any:
    """Load ``model`` (a name/path, or an already loaded :class:`~miprun.models.loading.LoadedModel`);
    with ``layerwise``, only its skeleton, embedding and head (:mod:`miprun.models.layerwise`)."""
    from miprun.models.layerwise import load_layerwise
    from miprun.models.loading import LoadedModel, load_model

    with stage("load", timings, reporter):
        if isinstance(model, LoadedModel):
            return model
        loaded = load_layerwise(str(model), dtype=dtype, device=device) if layerwise else \
            load_model(str(model), dtype=dtype, device_map=device_map)
    if loaded.source.get("not_loaded"):
        reporter.note(f"'{model}' is a multimodal checkpoint; {type(loaded.model).__name__} loads its language model "
                      f"alone, without {', '.join(loaded.source['not_loaded'])}: the pruned checkpoint is text-only "
                      f"({loaded.model.config.model_type})")
    return loaded


def calibrate_stage(
    loaded: Any, *, calib: str, num_samples: int, seq_len: int, seed: int, timings: dict[str, float], reporter: Reporter,
    apart_from: Any = None, apart_count: int | None = None, flag: str = "--num-samples",
) -> Any:
    """Draw the calibration token windows (seeded) for ``loaded``; ``apart_from`` and
    ``apart_count`` as :func:`~miprun.data.calibration.load_calibration` takes them (the healing
    windows: the preview's apart from the calibration ones they do not repeat). Windows asking for more than twice the source's
    tokens (each read twice or more on average: repeated text, not more of it) are said in a note
    naming ``flag``, the option that sets their number."""
    import torch

    from miprun.data.calibration import load_calibration
    from miprun.memory import release_freed_memory

    torch.manual_seed(seed)
    with stage("calibrate", timings, reporter):
        calibration = load_calibration(
            calib, loaded.tokenizer, num_samples=num_samples, seq_len=seq_len, seed=seed, model=loaded.model,
            apart_from=apart_from, apart_count=apart_count)
    release_freed_memory()  # tokenizing the source text takes far more than the windows kept
    available = calibration.source.get("source_tokens")
    if available and num_samples * seq_len > 2 * available:
        reporter.note(f"{num_samples} windows of {seq_len} tokens read the {available} tokens of '{calib}' about "
                      f"{num_samples * seq_len / available:.0f} times each: repeated text, not more of it; a longer source "
                      f"would give them more to learn from, fewer ({flag}) would cost less")
    return calibration


def prune(
    model: Any = DEFAULT_MODEL,
    *,
    n: int | None = None,
    ratio: float | None = None,
    calib: str = "wikitext2",
    num_samples: int = 16,
    seq_len: int = 256,
    seed: int = 0,
    granularity: str = "block",
    method: str | None = None,
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
    heal: str | None = None,
    heal_samples: int = 128,
    heal_candidates: int = 1,
    layerwise: bool = False,
    max_memory: str | None = None,
    device: str | None = None,
    check: bool = True,
) -> PruneResult:
    """Prune ``model`` (a name/path/hub id, or a :class:`miprun.models.loading.LoadedModel`).

    :param n: blocks to remove; or ``ratio`` of blocks (default 0.2 when neither is given). At
        neuron granularity: FFN neurons to remove from every layer, or the ratio of each layer's.
    :param calib: calibration source (see :mod:`miprun.data.calibration`).
    :param granularity: ``"block"`` (remove blocks) or ``"neuron"`` (remove FFN neurons).
    :param method: a named method (``"shortgpt"``, ``"mi-prun"`` …) or a combination
        ``SCORER[:ESTIMATOR]+SELECTOR[+SURGEON]`` (:mod:`miprun.methods`); the strategies named
        below override it. How unnamed strategies are chosen: :mod:`miprun.plans`.
    :param options: per-kind strategy options, e.g. ``{"estimator": {"alpha": 2}}``.
    :param output: checkpoint directory; default ``pruned/<model>-<scorer>-<selector>-minus<N>``.
    :param save: write the checkpoint and report (False keeps the result in memory only).
    :param evaluate: keyword arguments for :func:`miprun.evaluation.evaluate`, run on the pruned
        model before saving; its results go into the report.
    :param heal: the healer (a registered name: ``"linear"``, miprun's default, refits in closed
        form the down projection before each cut so that it carries what the removed blocks added;
        ``"replaceme"`` folds ReplaceMe's hidden × hidden map there; :mod:`miprun.healing`), or
        ``"none"`` for plain removal. None takes the default: healed wherever the plan removes
        whole blocks and the architecture can be healed, plain removal otherwise, with the reason
        in the report (rule 7 of :mod:`miprun.plans`).
    :param heal_samples: calibration sequences (of ``seq_len`` tokens, same source and seed) the
        healing fit reads — more than selection needs: 16 × 256 tokens over-fit the map.
    :param heal_candidates: heal-aware selection — with ``heal``, heal the selection and the next
        best block sets the scorer evaluated (this many in all) and keep the one whose healed
        removal has the lowest loss on healing sequences the fit did not see (the last eighth);
        1 (default) heals the selection as it is.
    :param layerwise: run block by block from the checkpoint's safetensors files, never holding
        more than the embedding, the head and one block (:mod:`miprun.models.layerwise`).
    :param max_memory: a memory budget (``"200MiB"``, ``"40GB"``): a model whose weights exceed it
        runs layer-wise, and layer-wise execution is refused when even it would not fit.
    :param device: where the model computes (``"cpu"``, ``"cuda"``, ``"cuda:1"``): the device of
        layer-wise execution, or the one device an in-memory model is placed on.
    :param check: end with the quality check (:mod:`miprun.quality`): dense and pruned perplexity
        on held-out windows of the calibration source, in the report, with a warning when the
        result is ruined.
    """
    from miprun.data.calibration import check_calibration
    from miprun.engine import execute, preview_sequences
    from miprun.granularity import GRANULARITY, check_count
    from miprun.models.loading import LoadedModel, check_device_map, source_locations
    from miprun.options import check_arguments, check_dtype
    from miprun.output import check_checkpoint_output, output_lock

    checked = check_arguments("prune", {
        "n": (n, "int"), "ratio": (ratio, "number"), "calib": (calib, "path"), "num_samples": (num_samples, "int"),
        "seq_len": (seq_len, "int"), "seed": (seed, "int"), "granularity": (granularity, "text"), "method": (method, "text"),
        "collector": (collector, "text"), "estimator": (estimator, "text"), "scorer": (scorer, "text"),
        "selector": (selector, "text"), "surgeon": (surgeon, "text"), "options": (options, "mapping"),
        "output": (output, "path"), "save": (save, "flag"), "overwrite": (overwrite, "flag"), "dtype": (dtype, "text"),
        "evaluate": (evaluate, "mapping"), "heal": (heal, "text"), "heal_samples": (heal_samples, "int"),
        "heal_candidates": (heal_candidates, "int"), "layerwise": (layerwise, "flag"), "max_memory": (max_memory, "text"),
        "device": (device, "text"), "check": (check, "flag"),
    }, optional=("n", "ratio", "method", "collector", "estimator", "scorer", "selector", "surgeon", "options", "output",
                 "evaluate", "heal", "max_memory", "device"))
    n, ratio, num_samples, seq_len, seed, heal_samples, heal_candidates = (checked[name] for name in (
        "n", "ratio", "num_samples", "seq_len", "seed", "heal_samples", "heal_candidates"))
    if not isinstance(model, (str, os.PathLike, LoadedModel)):
        raise MiprunError(f"prune(): model must be a name, a path, a hub id or a LoadedModel, got {model!r}")
    calib = str(calib)
    check_dtype(dtype)
    reporter = reporter or Reporter()
    registry = get_registry()
    plan = resolve_plan(
        granularity=granularity, method=method, collector=collector, estimator=estimator, scorer=scorer,
        selector=selector, surgeon=surgeon, healer=heal, options=options, seed=seed, registry=registry,
    )
    strategies = plan.build(registry)  # option values are checked before the model is loaded
    healed = "healer" in plan.names
    execution = _execution(model, plan, dtype=dtype, layerwise=layerwise, max_memory=max_memory)
    if device is not None and device_map is not None:
        raise MiprunError("pass either --device (one device) or --device-map (accelerate placement), not both")
    if device is not None:
        check_device_map(device, flag="--device")
    if execution.mode == "layerwise" and device_map is not None:
        raise MiprunError(f"layer-wise execution ({execution.reason}) places one block at a time itself; "
                          f"name its device with --device instead of --device-map")
    for flag, value in (("--heal-samples", heal_samples), ("--heal-candidates", heal_candidates)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MiprunError(f"{flag} must be a whole number ≥ 1, got {value!r}")
    if heal_candidates > 1 and not healed:
        raise MiprunError(f"--heal-candidates chooses among healed block sets, and this run heals nothing "
                          f"({plan.reasons['healer']}); drop --heal-candidates")
    if heal_candidates > 1 and heal_samples < 2:
        raise MiprunError("heal-aware selection fits on some healing sequences and judges on others; "
                          f"--heal-samples {heal_samples} leaves none to judge on: pass 2 or more")
    check_count(n, ratio)  # what needs no model is refused before it loads
    check_calibration(calib, num_samples=num_samples, seq_len=seq_len)
    if evaluate:
        from miprun.evaluation.perplexity import check_dataset

        for dataset in evaluate.get("ppl", ()):
            check_dataset(dataset)
    if output is not None and save:
        check_checkpoint_output(Path(output), overwrite=overwrite, sources=source_locations(model))
    timings: dict[str, float] = {}

    loaded = load_stage(model, dtype=dtype, device_map=device if device is not None else device_map, timings=timings,
                        reporter=reporter, layerwise=execution.mode == "layerwise", device=device or "cpu")
    execution_record = execution.record()
    if execution.mode == "layerwise":
        from miprun.models.devices import input_embedding
        from miprun.models.layerwise import check_budget

        hidden = int(input_embedding(loaded.model).weight.shape[-1])
        execution_record["footprint_bytes"] = check_budget(loaded, execution.max_memory, num_samples * seq_len * hidden)
    unit = GRANULARITY[plan.granularity]
    count = unit.count(loaded.adapter, n, ratio)
    out_path = Path(output) if output is not None else unit.default_output(
        loaded.source.get("spec", str(model)), plan.names, count, loaded.adapter)
    with output_lock(out_path) if save else nullcontext():
        if save:
            check_checkpoint_output(out_path, overwrite=overwrite, sources=source_locations(model))
        calibration = calibrate_stage(loaded, calib=calib, num_samples=num_samples, seq_len=seq_len, seed=seed,
                                      timings=timings, reporter=reporter)
        read = [calibration]
        if healed or (check and calib != "self"):  # the check avoids the healing windows even where the run does
            # not heal, so that --heal none is judged on the windows the healed run is (generated text is new anyway)
            # the windows a healing preview fits on, held apart also with --heal none: the check avoids the same windows
            previewed = preview_sequences(loaded.model, loaded.adapter, calibration.input_ids) \
                if plan.granularity == "block" else None
            read.append(calibrate_stage(loaded, calib=calib, num_samples=heal_samples, seq_len=seq_len, seed=seed,
                                        timings={}, reporter=reporter, apart_from=calibration, apart_count=previewed,
                                        flag="--heal-samples"))
        heal_ids = read[-1].input_ids if healed else None
        reference = _dense_reference(loaded, calib=calib, seq_len=seq_len, seed=seed, timings=timings,
                                     reporter=reporter, read=read) if check else None
        outcome = execute(plan, loaded.model, loaded.adapter, calibration.input_ids, count=count,
                          tokenizer=loaded.tokenizer, seed=seed, strategies=strategies, registry=registry,
                          reporter=reporter, timings=timings, heal_ids=heal_ids, heal_candidates=heal_candidates,
                          judge=_judge(loaded, reference) if reference is not None else None)
        apart = read[-1].source.get("apart_from") if healed else None
        if apart and apart["redrawn"] and isinstance(outcome.surgery.get("healing"), dict):
            outcome.surgery["healing"]["windows_redrawn"] = apart  # the preview's windows, held out by token
        report = {
            "miprun_report_version": 1,
            "model": loaded.source,
            "model_type": loaded.adapter.model_type,
            "data": calibration.source,
            "seed": seed,
            "execution": execution_record,
            **outcome.report(registry),
            **({} if healed else {"healing_reason": plan.reasons["healer"]}),
            "rerun": {"model": loaded.source.get("spec", str(model)), "n": count, "calib": calib,
                      "num_samples": num_samples, "seq_len": seq_len, "seed": seed, "granularity": plan.granularity,
                      **{kind: name for kind, name in plan.names.items() if kind != "healer"}, "options": {kind: values for kind, values in plan.options.items() if values},
                      "dtype": dtype, "device_map": device_map,
                      # as given (None: the default), so that a rerun settles a losing default heal the same way
                      "heal": heal, **({"heal_samples": heal_samples} if healed else {}),
                      **({"heal_candidates": heal_candidates} if heal_candidates > 1 else {}),
                      **({"layerwise": True} if layerwise else {}),
                      **({"max_memory": max_memory} if max_memory is not None else {}),
                      **({"device": device} if device is not None else {})},
        }
        if reference is not None:
            named = any(value is not None for value in (method, collector, estimator, scorer, selector, surgeon))
            report["quality"] = _check(loaded, reference, named=named, count=count, timings=timings, reporter=reporter)
            if outcome.plain_loss is not None:
                from miprun.heal_guard import settle_healing

                settle_healing(report, strategies["healer"], outcome.plain_loss,
                               named=plan.reasons.get("healer") == "named", note=reporter.note,
                               recheck=lambda: _check(loaded, reference, named=named, count=count, timings=timings,
                                                      reporter=reporter))
                if "undone" in report["surgery"]["healing"] and "parameters_after" in report["surgery"]:
                    from miprun.models.parameters import count_parameters  # an untied head is tied again

                    report["surgery"]["parameters_after"] = count_parameters(loaded.model)
        result = PruneResult(loaded.model, loaded.tokenizer, loaded.adapter, outcome.selection, outcome.scores, report,
                             timings=timings)
        return _finish(result, evaluate=evaluate, save=save, out_path=out_path, overwrite=overwrite, reporter=reporter)


def _dense_reference(loaded: Any, *, calib: str, seq_len: int, seed: int, timings: dict[str, float],
                     reporter: Reporter, read: list[Any]) -> Any:
    """The quality check's held-out windows (seed + 1; no token shared with the windows ``read``
    by selection and healing) and the dense model's loss on them."""
    from miprun.data.calibration import load_calibration
    from miprun.quality import WINDOWS, dense_reference

    start = time.perf_counter()
    windows = load_calibration(calib, loaded.tokenizer, num_samples=WINDOWS, seq_len=seq_len, seed=seed + 1,
                               model=loaded.model, held_out_from=read)
    held_out = windows.source.get("held_out")
    if held_out is not None and held_out["disjoint"] < held_out["windows"]:
        reporter.note(f"only {held_out['disjoint']} of the quality check's {held_out['windows']} windows share no token "
                      f"with the text selection and healing read (the source has {held_out['source_tokens']} tokens): "
                      f"the check is optimistic; pass a larger --calib or fewer --num-samples/--heal-samples")
    reference = dense_reference(loaded.model, loaded.adapter, windows.input_ids, windows.source)
    timings["check"] = round(time.perf_counter() - start, 4)
    return reference


def _judge(loaded: Any, reference: Any) -> Any:
    """``judge(skip)``: the model's mean loss on the quality check's held-out windows with the
    blocks ``skip`` skipped (the engine's measure of plain removal before healing); the dense
    blocks before them are replayed from the reference."""
    from miprun.probing import Prober

    return lambda skip: Prober(loaded.model, loaded.adapter, reference.input_ids).loss(skip, replay=reference.prefix)


def _check(loaded: Any, reference: Any, *, named: bool, count: int, timings: dict[str, float],
           reporter: Reporter) -> dict[str, Any]:
    """The quality check of the pruned model (:func:`miprun.quality.check_quality`), timed into
    the ``check`` stage with the dense reference; its warning, if any, is reported as a note."""
    from miprun.quality import check_quality

    suggestion = ("try miprun's default (no --method/--scorer/--selector/--estimator: output-MI selection, healed)"
                  if named else f"remove fewer than {count}")
    start = time.perf_counter()
    record = check_quality(loaded.model, loaded.adapter, reference, suggestion=suggestion)
    timings["check"] = round(timings.get("check", 0.0) + time.perf_counter() - start, 4)
    if "warning" in record:
        reporter.note(f"warning: {record['warning']}")
    return record


def _execution(model: Any, plan: Any, *, dtype: str, layerwise: bool, max_memory: str | None) -> Any:
    """In memory or layer-wise (:func:`miprun.models.layerwise.choose_execution`); a layer-wise
    run must remove whole blocks, the only surgery that needs no weights in memory."""
    from miprun.models.layerwise import Execution, choose_execution
    from miprun.models.loading import LoadedModel

    if isinstance(model, LoadedModel):
        from miprun.models.layerwise import layerwise_loader

        mode = "layerwise" if layerwise_loader(model.model) is not None else "in-memory"
        return Execution(mode, "the model was loaded by the caller")
    execution = choose_execution(str(model), dtype=dtype, layerwise=layerwise, max_memory=max_memory)
    if execution.mode == "layerwise" and (plan.granularity != "block" or plan.names.get("surgeon") != "remove-blocks"):
        raise MiprunError(f"layer-wise execution ({execution.reason}) removes whole blocks only; this plan uses "
                          f"{plan.granularity} granularity and the '{plan.names.get('surgeon')}' surgeon, which edit "
                          f"weights in memory — raise --max-memory or prune blocks with remove-blocks")
    return execution


def _finish(
    result: PruneResult, *, evaluate: dict[str, Any] | None, save: bool, out_path: Path, overwrite: bool, reporter: Reporter,
) -> PruneResult:
    """Evaluate the pruned model (optional), add versions and timings to the report, and save the
    checkpoint with ``miprun_report.json`` atomically (when ``save``)."""
    from miprun.output import save_checkpoint
    from miprun.provenance import versions

    report, timings = result.report, result.timings
    report["timings"] = timings
    report["versions"] = versions()
    if evaluate:
        from miprun.evaluation import evaluate as run_evaluation

        with stage("evaluate", timings, reporter):
            report["evaluation"] = run_evaluation(result.model, result.tokenizer, **evaluate)
    if save:
        with stage("save", timings, reporter):
            result.output = save_checkpoint(result.model, result.tokenizer, out_path, report, overwrite=overwrite)
    return result
