"""Scorer ``output-mi``: MI between the model's output with and without a block set.

Let Z be what the language-model head reads (the final hidden state, after the final norm) on the
calibration tokens, and Z₋S the same with the blocks S removed. The score of S is I(Z; Z₋S), from
the run's estimator (``gaussian-channel`` by default: the removal acts as additive noise
Z₋S − Z on the dense output). High MI means the pruned model still carries what the full model
hands its head, so S adds little: importance = −I(Z; Z₋S).

Z is compared in the geometry of the model's predictions (``space="logits"``, the default): the
head's input is mapped isometrically onto the centred logits, so a difference counts as much as
it moves the logits — the only thing the model's output depends on — and directions the head
ignores (or the constant shift softmax ignores) count for nothing. ``space="hidden"`` compares the
raw head input; measured against the true removal cost on two calibration sources, the logit
geometry chose better block sets (docs/estimators.md).

Why not only the block's own input and output (``block-mi``, the MI-PRUN paper)? A block's local
input/output statistics miss what later blocks do with its update, and blocks removed together
interact; on SmolLM2-135M the local MI ranks blocks with Spearman ρ ≈ 0.80 against the true
removal cost and this score with ρ ≈ 0.9 (docs/estimators.md). It is still a mutual information
between two random variables — the dense and the pruned output — not a loss or a label.

Cost: one model run per block or block set scored. With ``reuse_prefix`` (default) the reference
run keeps every block's output and a run for a set S runs only the blocks from min(S) on — the
same numbers for about half the compute. Values are computed only when a selector asks. The
scores carry a **screen** (``scores.screen``: the same score on 1 in 16 calibration sequences by
default) for selectors that explore — single-block rankings are as good there — and a decider
(``scores.choose``) that races a few candidate sets on all sequences and stops once the gap is
beyond sampling noise (:mod:`miprun.racing`); ``set-exchange`` uses both, which brings the
default pipeline to about three plain forward passes at 6 of 30 blocks (docs/estimators.md).
Any set can be scored (:attr:`SpanScores.supports_sets`).

**Healed scores.** When the run heals (the default) and its healer offers a preview
(``context.healing``, :mod:`miprun.healing_preview`), Z₋S is the output of the model with S removed
*and healed*: each cut's fit, made on healing sequences the scores are not computed on, acts at run
time while the pruned model runs. The selection is then chosen for the model the run saves, not for
plain removal, which heals differently (one contiguous cut heals better than several;
docs/healing.md). ``healed=False`` scores plain removal.
"""

from __future__ import annotations

from typing import Any

import torch

from miprun.contracts import BoundaryStates, SpanScores
from miprun.errors import MiprunError
from miprun.estimators.preprocess import check_choice
from miprun.models.devices import accelerate_hooks, input_embedding, output_head

SPACES = ("hidden", "logits")


def logit_isometry(model: Any, rows_per_chunk: int = 8192) -> torch.Tensor:
    """R (hidden × hidden, float64, on CPU) with ‖R·z‖ = ‖W_c·z‖ for the centred output embedding W_c.

    R is the upper Cholesky factor of the Gram W_cᵀW_c (unique, so the same R on every run; the
    square root of an eigendecomposition if the Gram is singular). The Gram is accumulated over
    ``rows_per_chunk`` vocabulary rows at a time on the head's own device: no float64 copy of a
    vocabulary-sized matrix is made, and on a GPU the O(V·d²) products run there. The head is taken
    as the linear map it is for decoder LLMs; a head bias or a transform before it (BERT's
    masked-LM head) is not part of R.
    """
    weight = _head_weight(model)
    device = weight.device if weight.device.type not in ("meta", "mps") else torch.device("cpu")  # mps: no float64
    gram = torch.zeros((weight.shape[1], weight.shape[1]), dtype=torch.float64, device=device)
    total = torch.zeros(weight.shape[1], dtype=torch.float64, device=device)
    for chunk in weight.split(rows_per_chunk):
        chunk = chunk.to(device, torch.float64)
        gram += chunk.T @ chunk
        total += chunk.sum(0)
    mean = total / weight.shape[0]
    gram = (gram - weight.shape[0] * torch.outer(mean, mean)).cpu()
    factor, info = torch.linalg.cholesky_ex(gram, upper=True)
    if int(info) == 0:
        return factor
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    return (eigenvectors * eigenvalues.clamp_min(0).sqrt()).T


def in_space(z: torch.Tensor, to_space: torch.Tensor, rows: int = 1024) -> torch.Tensor:
    """``z`` (tokens × hidden) mapped by ``to_space`` (z ↦ R·z) in float64, ``rows`` tokens at a
    time, so no float64 copy of ``z`` is made besides the result."""
    return torch.cat([part.double() @ to_space.T for part in z.split(rows)])


def _head_weight(model: Any) -> torch.Tensor:
    """The language-model head's weight. When accelerate has offloaded it (a meta tensor), the copy
    its hook holds — or, for a head tied to the input embedding, the embedding's copy."""
    head = output_head(model)
    if head is None or getattr(head, "weight", None) is None:
        raise MiprunError("output-mi with space=logits needs a model with a language-model head; "
                          "use space=hidden or load it with AutoModelForCausalLM")
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    for module in (head, input_embedding(model) if tied else None):
        if module is None or getattr(module, "weight", None) is None:
            continue
        if not module.weight.is_meta:
            return module.weight.detach()
        for hook in accelerate_hooks(module):
            weights_map = getattr(hook, "weights_map", None)
            if weights_map is not None and "weight" in weights_map:
                return weights_map["weight"].detach()
    raise MiprunError("output-mi with space=logits cannot find the language-model head's weights (a meta "
                      "tensor with no offload copy); load the model with its weights or use space=hidden")


def screen_size(screen: int | str, num_samples: int) -> int:
    """Calibration sequences of the screening estimate: ``"auto"`` is one in 16 (at least one),
    an integer is taken as given (capped at ``num_samples``), ``"off"`` is 0 (no screen)."""
    if screen == "off":
        return 0
    if screen == "auto":
        return max(1, num_samples // 16)
    return min(int(screen), num_samples)


def check_screen(screen: Any, owner: str) -> int | str:
    """``screen`` as ``"auto"``, ``"off"`` or a whole number ≥ 1; a one-line error otherwise."""
    if screen in ("auto", "off"):
        return screen
    text = str(screen).strip()
    if not isinstance(screen, bool) and text.isdigit() and int(text) >= 1:
        return int(text)
    raise MiprunError(f"{owner}: screen must be auto, off or a whole number of sequences ≥ 1, got {screen!r}")


class OutputMIScorer:
    """−I(Z; Z₋S) between the head's input with all blocks and with the blocks S removed.

    :param samples: calibration sequences used (the first ones); ``None`` uses all.
    :param screen: sequences of the cheaper *screening* estimate handed to selectors as
        ``scores.screen`` (the first ones): ``"auto"`` (default) one in 16, at least one — the
        single-block ranking is as good on 1 of 16 sequences (Spearman ρ with the true
        removal cost 0.92 against 0.90 on all 16, docs/estimators.md) while choosing between sets needs every sequence, so a selector ranks
        and explores on the screen and decides on the full scores; ``"off"`` for none; a number.
    :param batch_size: sequences per forward batch (memory only).
    :param reuse_prefix: replay the dense blocks before the first removed one (see the module
        docstring); off saves the memory and recomputes them.
    :param space: ``"logits"`` (default) first maps the head's input isometrically onto the
        centred logits (z ↦ R·z with RᵀR = W_cᵀW_c for the output embedding minus its mean row,
        so ‖R·z‖ = ‖W_c·z‖): distances count as much as they move the logits, at no
        vocabulary-sized cost per token. ``"hidden"`` compares the head's input as it is.
    :param healed: when the run heals and its healer offers a preview (``context.healing``), score
        the *healed* pruned output — each set's cuts fitted on healing sequences the scores are not
        computed on — so that the selection is chosen for the model the run will save; False
        scores plain removal.
    """

    name = "output-mi"

    def __init__(
        self, samples: int | None = None, screen: int | str = "auto", batch_size: int = 4,
        reuse_prefix: bool = True, space: str = "logits", healed: bool = True,
    ) -> None:
        check_choice("space", space, SPACES, self.name)
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
            raise MiprunError(f"samples must be a whole number ≥ 1 (or unset for all), got {samples!r}")
        self.samples = samples
        self.screen = check_screen(screen, self.name)
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        self.space = space
        self.healed = healed

    def score(self, states: BoundaryStates | None, estimator: Any | None = None, *, context: Any = None) -> SpanScores:
        """Scores with value = I(Z; Z₋S) in nats for spans and arbitrary block sets, computed when a
        selector asks; with a screen, ``scores.screen`` holds the same on fewer sequences."""
        from miprun.probing import Prober

        if estimator is None:
            raise MiprunError("scorer 'output-mi' needs an estimator; pass --estimator (e.g. gaussian-channel)")
        prober = Prober.from_context(context, batch_size=self.batch_size, who="scorer 'output-mi'",
                                     samples=self.samples)
        preview = getattr(context, "healing", None) if self.healed else None
        to_space = logit_isometry(context.model) if self.space == "logits" else None
        used = int(prober.input_ids.shape[0])
        screened = screen_size(self.screen, used)
        screen = None
        if 0 < screened < used:
            screen = self._scores(Prober.from_context(context, batch_size=self.batch_size, samples=screened),
                                  estimator, to_space, context.adapter.num_blocks, preview)
        return self._scores(prober, estimator, to_space, context.adapter.num_blocks, preview, screen=screen,
                            decide=self._racer(prober, estimator, to_space, context, preview),
                            info={"samples": used, "screen_samples": screened if screen is not None else 0,
                                  "healed": preview is not None})

    def _pruned(self, prober: Any, sets: list[tuple[int, ...]], preview: Any) -> list[torch.Tensor]:
        """The head's input over ``prober``'s sequences with each of ``sets`` removed — healed by
        ``preview``'s fits when there is one (the blocks before the first one they change replayed)."""
        if preview is None:
            return prober.output_states_many(sets, reuse_prefix=self.reuse_prefix)
        outputs = []
        for blocks in sets:
            with preview.applied(blocks) as first:
                outputs.append(prober.output_states(blocks, reuse_prefix=self.reuse_prefix, run_from=first))
        return outputs

    def _racer(self, prober: Any, estimator: Any, to_space: torch.Tensor | None, context: Any, preview: Any) -> Any:
        """``decide(sets)`` for :meth:`SpanScores.choose`: race the sets on chunks of
        ``batch_size`` sequences by their per-sequence output MI (:mod:`miprun.racing`)."""
        from miprun.probing import Prober
        from miprun.racing import race

        ids = prober.input_ids
        chunks = [ids[start : start + self.batch_size] for start in range(0, ids.shape[0], self.batch_size)]

        def per_sequence(z: torch.Tensor) -> list[Any]:
            z = z if to_space is None else in_space(z, to_space)
            return [estimator.prepare(rows) for rows in z.split(ids.shape[1])]

        def values_on(chunk: torch.Tensor, alive: list[tuple[int, ...]]) -> dict[tuple[int, ...], list[float]]:
            local = Prober(context.model, context.adapter, chunk, batch_size=self.batch_size, context=context)
            reference = per_sequence(local.output_states(reuse_prefix=self.reuse_prefix))
            values = {}
            for blocks, z in zip(alive, self._pruned(local, alive, preview)):
                values[blocks] = [estimator.mi_prepared(x, y) for x, y in zip(reference, per_sequence(z))]
            return values

        def decide(sets: list[tuple[int, ...]]) -> tuple[tuple[int, ...], dict[str, Any]]:
            best, record = race(sets, chunks, values_on)
            for row in record["candidates"]:
                row["candidate"] = list(row["candidate"])
                row["importance"] = -row.pop("mean")  # MI → importance, lower = safer
            return best, {"mode": "race", "sequences_per_chunk": self.batch_size, **record}

        return decide

    def _scores(self, prober: Any, estimator: Any, to_space: torch.Tensor | None, num_blocks: int, preview: Any,
                **extra: Any) -> SpanScores:
        """Lazily computed output-MI scores over the sequences of ``prober``."""
        reference: list[Any] = []

        def prepared(z: torch.Tensor) -> Any:
            return estimator.prepare(z if to_space is None else in_space(z, to_space))

        def compute_sets(sets: list[tuple[int, ...]]) -> list[float]:
            if not reference:
                reference.append(prepared(prober.output_states(reuse_prefix=self.reuse_prefix)))
            pruned = self._pruned(prober, sets, preview)
            return [estimator.mi_prepared(reference[0], prepared(z)) for z in pruned]

        return SpanScores(
            num_blocks,
            lambda first, length: compute_sets([tuple(range(first, first + length))])[0],
            metric="mi",
            redundant_when_high=True,
            compute_set=lambda blocks: compute_sets([blocks])[0],
            compute_sets=compute_sets,
            **extra,
        )
