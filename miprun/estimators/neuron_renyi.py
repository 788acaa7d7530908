"""Estimator ``neuron-renyi``: matrix-based Rényi α-entropy MI between every pair of scalar FFN neurons,
with the kernel-width rule of Huang, Song & Pao.

For neuron i on a batch of n tokens, K_i = exp(−(x_ia − x_ib)² / 2σ_i²) and A_i = K_i / n; then
(Sanchez Giraldo, Rao & Príncipe 2015; Yu et al. 2019, as in :mod:`miprun.estimators.renyi`)

    S_α(A) = 1/(1−α) · log Σ_k λ_k(A)^α,     I_α(i; j) = S_α(A_i) + S_α(A_j) − S_α(A_i∘A_j / tr(A_i∘A_j)).

Kernel widths (``width="aligned"``, the paper's rule)
    For every batch: the *layer's* kernel uses Scott's rule on all neurons together
    (:func:`~miprun.estimators.kernels.scott_width`, √d-corrected, factor ``gamma``); each neuron's
    width starts from its own Scott width γ·std·n^(−1/5) and is moved, within a factor ``span``, to
    the width that maximises the kernel alignment between the neuron's kernel and the layer's kernel
    (:func:`~miprun.estimators.neuron_mi.aligned_widths`). The alignment is the *unbiased* centred
    alignment (HSIC U-statistic, Song et al. 2012), which leaves out the kernels' diagonals: a
    Gaussian Gram matrix has ones there whatever the width, and on 32-token batches the diagonal
    dominates the centred layer kernel, so the textbook centred alignment drove every neuron of a
    random 16-wide layer to the smallest width searched (``alignment="centred"`` keeps it for
    comparison). The grid has 9 points and the refinement (safeguarded parabolic interpolation,
    :func:`~miprun.estimators.kernels.maximise_log_width`) stops at a bracket of 1 % in σ. The
    per-batch optimum (batches of ``width_batch_size`` = 32 tokens) is smoothed over all batches with
    an exponential moving average σ ← β σ + (1 − β) σ*_batch (``ema`` = β = 0.5, as
    :class:`~miprun.estimators.kernels.WidthEMA`), then rescaled by Scott's n^(−1/5) to the MI
    batch size. Only the last batches whose optima can move the average are searched
    (:func:`~miprun.estimators.kernels.ema_horizon`: 11 at β = 0.5; the earlier ones together could
    move it by at most 10⁻³ of the optima's spread, below the search's own 1 % tolerance): 11 of the
    16 batches of the ``ffn-activations`` collector's 512 tokens per layer. ``width="scott"`` skips the alignment (Scott's rule per neuron, EMA-smoothed); a
    float fixes every width.

Cost and batching
    α = 2 needs no eigenvalues: S_2(A) = −log ‖A‖²_F and the joint term of every pair is one inner
    product, ‖K_i∘K_j‖²_F = Σ_ab K_i[ab]² K_j[ab]², so all pairs of a layer are one matrix product
    Q Qᵀ with Q_i = vec(K_i∘K_i) (upper triangle). Any other α (default 1.01, the value the paper
    found best) needs the spectrum of the joint matrix of a pair: one batched ``eigvalsh`` of n × n
    matrices per chunk of pairs, run on ``workers`` threads. With ``pairs="exact"`` that is every pair;
    the default ``pairs="moments"`` computes the spectrum for a random calibration sample of pairs
    only (and, with ``partners`` > 0, for each neuron's nearest partners) and predicts the rest from
    the pairs' exact order-2 and order-3 entropies (:mod:`~miprun.estimators.renyi_moments`; 11×
    faster on a 1 536-neuron layer, not the same selections — docs/neuron-pruning.md). Either way
    it is O(m² n³) per layer at most, which is why the tokens are split into batches of
    ``batch_size`` (default 32 for α ≠ 2, 128 for α = 2) and the MI is averaged over the first
    ``mi_batches`` batches (default 1 for α ≠ 2, 4 for α = 2), while the widths use every batch. Measured on 2 CPU cores: see docs/neuron-pruning.md.

Tokens are standardised per neuron over the whole sample first (``normalize``) and split into
batches after a seeded shuffle, so every batch mixes all calibration sequences.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import torch

from miprun.errors import MiprunError
from miprun.estimators import kernels
from miprun.estimators.neuron_mi import (
    ALIGNMENTS,
    CHUNK_BYTES,
    ScalarPairMixin,
    aligned_widths,
    normalised_spectra,
    parallel_map,
    renyi_entropies,
    scalar_sq_dists,
    scott_widths,
    upper_pairs,
)
from miprun.estimators.preprocess import (
    NORMALIZATIONS,
    check_choice,
    normalize_tokens,
    optional_int,
)
from miprun.estimators.renyi_moments import (
    JointEntropyMap,
    joint_entropies_23,
    pair_features,
    spectrum_entropies,
    triple_count,
)

WIDTH_RULES = ("aligned", "scott")
PAIR_RULES = ("moments", "exact")
MOMENT_BYTES = 1 << 30  # largest order-3 feature matrix the moments path builds


def _pair_keys(a: torch.Tensor, b: torch.Tensor, m: int) -> torch.Tensor:
    """Unordered pairs (a, b) of ``m`` neurons as sorted unique keys min · m + max."""
    return torch.unique(torch.minimum(a, b) * m + torch.maximum(a, b))


class NeuronRenyiEstimator(ScalarPairMixin):
    """All-pairs matrix-based Rényi MI of scalar neurons (see the module docstring).

    :param alpha: entropy order α > 0; 1.01 (default, the paper's) or 2 (fast path).
    :param width: ``aligned`` (Scott for the layer, refined per neuron by kernel alignment with the
        layer's kernel, EMA over batches), ``scott``, or a fixed float width.
    :param gamma: Scott factor γ for the layer's and the neurons' initial widths.
    :param ema: EMA factor β smoothing the per-batch widths.
    :param span: the aligned width stays within [σ_Scott / span, σ_Scott · span].
    :param batch_size: tokens per batch (None: 32 for α ≠ 2, 128 for α = 2).
    :param mi_batches: batches the MI is averaged over (None: 1 for α ≠ 2, 4 for α = 2).
    :param width_batches: batches the widths are smoothed over (None: all, default; of these only the
        last :func:`~miprun.estimators.kernels.ema_horizon` are searched).
    :param width_batch_size: tokens per batch of the width search (default 32; the MI batches are
        ``batch_size``; the aligned width is searched relative to each batch's Scott width).
    :param alignment: ``unbiased`` (default; the kernels' diagonals left out, see
        :func:`~miprun.estimators.neuron_mi.aligned_widths`) or ``centred`` (the textbook form).
    :param normalize: per-neuron token normalisation before everything (``standardize``).
    :param workers: threads for the eigendecompositions (None: torch's thread count).
    :param pairs: ``moments`` (default): every pair's joint entropy exactly on ``calibration`` random
        pairs (and each neuron's ``partners`` most dependent pairs), elsewhere from its exact order-2
        and order-3 entropies through a per-layer least-squares map
        (:mod:`~miprun.estimators.renyi_moments`); ``exact``: the spectrum of every pair (the
        literal method; also used wherever the exact pairs would be half of them or more).
    :param partners: pairs per neuron computed exactly under ``moments``, chosen by predicted MI
        (default 0: on SmolLM2-135M 16 per neuron cost 14 s of the paper's width command and moved
        its selection and perplexity less than the token shuffle's seed does; docs/neuron-pruning.md).
    :param calibration: random pairs computed exactly to fit the map under ``moments`` (2 048: on a
        SmolLM2 layer the map's error over all 1.18 M pairs was 0.01155 nats with 2 048, 0.01148 with
        4 096, 0.01157 with 1 024, against an MI spread of 0.19).
    :param seed: seed of the token shuffle that forms the batches.
    """

    name = "neuron-renyi"
    metric = "mi"
    self_information = True  # the diagonal is I_α(i; i) = 2 S_α(A_i) − S_α(A_i∘A_i), finite

    def __init__(
        self,
        *,
        alpha: float = 1.01,
        width: str | float = "aligned",
        gamma: float = 0.8,
        ema: float = 0.5,
        span: float = 8.0,
        batch_size: int | None = None,
        mi_batches: int | None = None,
        width_batches: int | None = None,
        width_batch_size: int = 32,
        alignment: str = "unbiased",
        normalize: str = "standardize",
        workers: int | None = None,
        pairs: str = "moments",
        partners: int = 0,
        calibration: int = 2048,
        seed: int = 0,
    ) -> None:
        self.alpha = float(alpha)
        if not self.alpha > 0 or not math.isfinite(self.alpha):
            raise MiprunError(f"neuron-renyi option alpha={alpha!r} must be a positive number (1.01 or 2)")
        self.width = self._parse_width(width)
        self.gamma = float(gamma)
        self.ema = float(ema)
        self.span = float(span)
        if not self.gamma > 0 or not 0.0 <= self.ema < 1.0 or not self.span > 1.0:
            raise MiprunError("neuron-renyi options need gamma > 0, 0 ≤ ema < 1 and span > 1")
        fast = self.alpha == 2.0
        self.batch_size = optional_int("batch_size", batch_size, "neuron-renyi") or (128 if fast else 32)
        self.mi_batches = optional_int("mi_batches", mi_batches, "neuron-renyi") or (4 if fast else 1)
        self.width_batches = optional_int("width_batches", width_batches, "neuron-renyi")
        self.width_batch_size = int(width_batch_size)
        if self.width_batch_size < 4:
            raise MiprunError(f"neuron-renyi option width_batch_size={width_batch_size!r} must be at least 4 tokens")
        self.alignment = check_choice("alignment", alignment, ALIGNMENTS, "neuron-renyi")
        if self.batch_size < 4:
            raise MiprunError(f"neuron-renyi option batch_size={batch_size!r} must be at least 4 tokens")
        self.normalize = check_choice("normalize", normalize, NORMALIZATIONS, "neuron-renyi")
        self.workers = int(workers) if workers else max(1, torch.get_num_threads())
        self.pairs = check_choice("pairs", pairs, PAIR_RULES, "neuron-renyi")
        self.partners = int(partners)
        self.calibration = int(calibration)
        if self.partners < 0 or self.calibration < 64:
            raise MiprunError("neuron-renyi options need partners ≥ 0 and calibration ≥ 64 pairs")
        self.seed = int(seed)

    @staticmethod
    def _parse_width(width: Any) -> str | float:
        if isinstance(width, (int, float)) and not isinstance(width, bool):
            value = float(width)
        else:
            text = str(width).strip().lower()
            try:
                value = float(text)
            except ValueError:
                return check_choice("width", text, WIDTH_RULES, "neuron-renyi")
        if not value > 0 or not math.isfinite(value):
            raise MiprunError(f"neuron-renyi option width={width!r} must be a positive number or one of {WIDTH_RULES}")
        return value

    # ------------------------------------------------------------------ batches and widths

    def batches(self, n: int, size: int | None = None) -> list[torch.Tensor]:
        """Token indices of each batch: a seeded shuffle of ``n`` tokens cut into pieces of ``size``
        (default ``batch_size``; a last piece shorter than half a batch is dropped unless it is the
        only one)."""
        if n < 4:
            raise MiprunError(f"neuron-renyi needs at least 4 tokens, got {n}; raise --num-samples or collector.max_tokens")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        size = min(size or self.batch_size, n)
        pieces = list(order.split(size))
        if len(pieces) > 1 and len(pieces[-1]) < size // 2:
            pieces.pop()
        return pieces

    def widths(self, x: torch.Tensor, info: dict[str, Any] | None = None) -> torch.Tensor:
        """Per-neuron kernel widths for the MI batches of normalised data ``x`` (n × m): the aligned
        (or Scott) widths of ``width_batch_size``-token batches, EMA-smoothed, rescaled by Scott's
        n^(−1/5) from the width batches to the MI batches."""
        m = x.shape[1]
        if isinstance(self.width, float):
            return torch.full((m,), self.width, dtype=torch.float64)
        batches = self.batches(x.shape[0], self.width_batch_size)
        offered = batches[: self.width_batches] if self.width_batches else batches
        used = offered[len(offered) - kernels.ema_horizon(self.ema, len(offered)):]  # earlier ones cannot move the EMA

        def batch_widths(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(Scott widths, the rule's widths) of one batch."""
            xb = x[index].to(torch.float64)
            initial = scott_widths(xb, self.gamma)
            if self.width != "aligned":
                return initial, initial
            target = kernels.gaussian_gram(kernels.pairwise_sq_dists(xb), kernels.scott_width(xb, self.gamma))
            return initial, aligned_widths(xb, target, initial, span=self.span, alignment=self.alignment,
                                           grid_points=9, rel_tol=1e-2, dtype=torch.float32)

        per_batch = parallel_map(batch_widths, used, self.workers)  # independent searches; the EMA runs in order
        smoothed = per_batch[0][1]
        for _, widths in per_batch[1:]:
            smoothed = self.ema * smoothed + (1.0 - self.ema) * widths
        scott_last = per_batch[-1][0]
        n_width, n_mi = len(used[0]), min(self.batch_size, x.shape[0])
        smoothed = smoothed * (n_mi / n_width) ** (-1.0 / 5.0)
        scott_last = scott_last * (n_mi / n_width) ** (-1.0 / 5.0)
        if info is not None:
            info["width_rule"] = self.width
            info["width_batches"] = len(used)
            info["width_batches_skipped"] = len(offered) - len(used)
            info["width_median"] = float(smoothed.median())
            if self.width == "aligned" and scott_last is not None:
                info["aligned_over_scott_median"] = float((smoothed / scott_last).median())
        return smoothed

    # ------------------------------------------------------------------ MI

    def grams(self, xb: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
        """Unnormalised Gram matrices of every neuron on one batch: (m, n, n) float32."""
        n, m = xb.shape
        out = torch.empty(m, n, n, dtype=torch.float32)
        step = max(1, CHUNK_BYTES // (16 * n * n))
        for start in range(0, m, step):
            dist = scalar_sq_dists(xb[:, start : start + step].to(torch.float64))
            sigma2 = widths[start : start + step].pow(2)[:, None, None]
            out[start : start + step] = torch.exp(dist / (-2.0 * sigma2))
        return out

    def _batch_mi(self, grams: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
        m, n, _ = grams.shape
        if self.alpha == 2.0:
            q = pair_features(grams)  # (m, n(n−1)/2): K_ab² for a < b
            marginal = (n + 2.0 * q.to(torch.float64).sum(dim=1)) / n**2  # ‖A_i‖²_F
            joint = (n + 2.0 * (q @ q.T).to(torch.float64)) / n**2  # ‖A_i∘A_j‖²_F, tr(A_i∘A_j) = 1
            entropy = -marginal.log()
            return entropy[:, None] + entropy[None, :] + joint.log()
        spectra = normalised_spectra(grams)
        entropy = spectrum_entropies(spectra, self.alpha)
        diagonal = 2.0 * entropy - renyi_entropies(grams * grams, self.alpha)
        out = torch.zeros(m, m, dtype=torch.float64)
        total_pairs = m * (m - 1) // 2
        moments = self.pairs == "moments" and 2 * (self.calibration + m * self.partners) < total_pairs  # exact is cheaper otherwise
        if moments and m * triple_count(n) * 4 > MOMENT_BYTES:
            moments = False
            info["pairs_note"] = f"{n}-token batches need C({n}, 3) features per neuron; every pair computed exactly"
        if not moments:
            for a, b, joint in self._joint_entropies(grams, upper_pairs(m, self._max_pairs(n))):
                out[a, b] = out[b, a] = entropy[a] + entropy[b] - joint
            info.setdefault("exact_pairs", []).append(total_pairs)
        else:
            out = self._moments_mi(grams, spectra, entropy, diagonal, info)
        out[torch.arange(m), torch.arange(m)] = diagonal
        return out

    def _max_pairs(self, n: int) -> int:
        return max(1, CHUNK_BYTES // (4 * n * n))

    def _joint_entropies(self, grams: torch.Tensor, chunks: Iterator[tuple[torch.Tensor, torch.Tensor]]
                         ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(a, b, S_α(K_a∘K_b)) for chunks of pairs, from one batched eigendecomposition per chunk,
        ``workers`` chunks at a time (so the index arrays stay bounded)."""
        def joint_entropy(pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            a, b = pair
            return renyi_entropies(grams[a] * grams[b], self.alpha)

        pending = iter(chunks)
        while True:
            window = [chunk for _, chunk in zip(range(self.workers), pending)]
            if not window:
                return
            for (a, b), value in zip(window, parallel_map(joint_entropy, window, self.workers)):
                yield a, b, value

    def _exact_at(self, grams: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """S_α(K_a∘K_b) of the listed pairs, exactly, in chunks of equal size, as many as a multiple
        of ``workers`` (chunks of the largest size followed by a remainder left one thread with most
        of the work: 16 384 + 7 934 pairs on a SmolLM2 layer; the values do not depend on the
        chunking)."""
        largest = self._max_pairs(grams.shape[-1])
        count = self.workers * math.ceil(len(a) / (self.workers * largest)) if len(a) else 1
        step = max(1, math.ceil(len(a) / count))
        chunks = ((a[s : s + step], b[s : s + step]) for s in range(0, len(a), step))
        parts = [value for _, _, value in self._joint_entropies(grams, chunks)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)

    def _moments_mi(self, grams: torch.Tensor, spectra: torch.Tensor, entropy: torch.Tensor,
                    self_info: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
        """All-pairs I_α with the joint entropy from :mod:`~miprun.estimators.renyi_moments`: exact on
        ``calibration`` random pairs and on every neuron's ``partners`` most dependent pairs (if
        any), the per-layer least-squares map of the exact order-2/3 joint entropies elsewhere."""
        m = grams.shape[0]
        s2, s3 = joint_entropies_23(grams)
        marginal = torch.stack([entropy, spectrum_entropies(spectra, 2.0), spectrum_entropies(spectra, 3.0)], dim=1)
        mapping = JointEntropyMap(marginal)
        generator = torch.Generator().manual_seed(self.seed)
        a = torch.randint(0, m, (2 * self.calibration,), generator=generator)
        b = torch.randint(0, m, (2 * self.calibration,), generator=generator)
        flat = _pair_keys(a, b, m)
        flat = flat[(flat // m) != (flat % m)]
        flat = flat[torch.randperm(len(flat), generator=generator)[: self.calibration]]
        ca, cb = flat // m, flat % m
        exact = self._exact_at(grams, ca, cb)
        fit = mapping.fit(mapping.features(s2[ca, cb], s3[ca, cb], ca, cb), exact)
        joint = torch.empty(m, m, dtype=torch.float64)
        rows = max(1, CHUNK_BYTES // (80 * m))
        columns = torch.arange(m)[None, :]
        for start in range(0, m, rows):
            r = torch.arange(start, min(m, start + rows))
            joint[r] = mapping.predict(s2[r], s3[r], r[:, None], columns)
        joint[ca, cb] = joint[cb, ca] = exact
        out = entropy[:, None] + entropy[None, :] - joint
        exact_pairs = len(flat)
        if self.partners:  # every neuron's nearest partners by the (normalised) predicted MI, computed exactly
            scale = self_info.clamp_min(1e-12)
            closeness = out / torch.sqrt(scale[:, None] * scale[None, :])
            closeness.fill_diagonal_(-math.inf)
            near = closeness.topk(self.partners, dim=1).indices
            pa = torch.arange(m).repeat_interleave(self.partners)
            pflat = _pair_keys(pa, near.reshape(-1), m)
            pflat = pflat[~torch.isin(pflat, flat)]
            pa, pb = pflat // m, pflat % m
            out[pa, pb] = out[pb, pa] = entropy[pa] + entropy[pb] - self._exact_at(grams, pa, pb)
            exact_pairs += len(pflat)
        info.setdefault("exact_pairs", []).append(exact_pairs)
        info.setdefault("fit_rmse", []).append(fit["rmse"])
        info.setdefault("fit_r2", []).append(fit["r2"])
        return out

    def pairwise(self, acts: Any, *, info: dict[str, Any] | None = None) -> torch.Tensor:
        """Symmetric (m × m) float32 matrix of I_α between every pair of neurons of ``acts``
        (tokens × m); the diagonal holds I_α(i; i). ``info`` receives widths, batches and seconds."""
        start = time.perf_counter()
        x = torch.as_tensor(acts).detach().to("cpu", torch.float64)
        if x.ndim != 2:
            raise MiprunError(f"neuron-renyi expects a (tokens × neurons) matrix, got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise MiprunError("neuron-renyi input contains NaN or inf; check the collected activations")
        x = normalize_tokens(x, self.normalize)
        batches = self.batches(x.shape[0])
        widths = self.widths(x, info)
        width_seconds = time.perf_counter() - start
        used = batches[: self.mi_batches]
        total = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
        details: dict[str, Any] = {}
        for index in used:
            total += self._batch_mi(self.grams(x[index], widths), details)
        result = (total / len(used)).to(torch.float32)
        if info is not None:
            info.update({
                "alpha": self.alpha, "tokens": int(x.shape[0]), "batch_size": len(used[0]),
                "mi_batches": len(used), "width_seconds": round(width_seconds, 4),
                "seconds": round(time.perf_counter() - start, 4),
            })
            if self.alpha != 2.0:
                m = x.shape[1]
                info["pairs"] = "moments" if "fit_rmse" in details else "exact"
                info["exact_pair_fraction"] = round(sum(details["exact_pairs"]) / (len(used) * m * (m - 1) / 2), 4) if m > 1 else 1.0
                for key in ("fit_rmse", "fit_r2"):
                    if key in details:
                        info[key] = round(sum(details[key]) / len(details[key]), 5)
                if "pairs_note" in details:
                    info["pairs_note"] = details["pairs_note"]
        return result
