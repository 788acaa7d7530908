"""Selector ``mds-cluster``: keep one representative neuron per cluster of mutually redundant neurons
(Huang, Song & Pao).

Per FFN layer with m neurons and a target of k = m − n kept:

1. distances d_ij = A · exp(−s_ij) from the pairwise redundancy s, d_ii = 0: redundant neurons are
   close. By default (``normalize="auto"``) s is the MI divided by the self-information,
   s_ij = I_ij / √(I_ii I_jj), for estimators whose diagonal is a finite self-information (Rényi;
   |ρ| is unchanged), and the raw MI otherwise (Gaussian copula, whose I_ii is infinite). A departure
   from the paper, measured: the Rényi MI of scalar neurons at aligned widths is small (0.1–0.4 nats
   for a neuron and its copy, 0–0.1 for unrelated neurons), so exp(−MI) spans 0.7–1 and copies are
   hardly closer than strangers; on the synthetic copy test (tests/test_neuron_selectors.py) raw MI
   recovered the copies in 0 of 12 runs at the default α = 1.01, normalised MI in 12 of 12;
2. classical (Torgerson) multidimensional scaling: B = −½ J D⁽²⁾ J with J = I − 11ᵀ/m, embedding
   X = V Λ₊^½ (d is not Euclidean in general; negative eigenvalues are dropped). By default
   (``dims=None``) *every* positive dimension is kept and the embedding is never formed: k-means
   needs only the squared distances between embedded points, D²_ij = B₊_ii + B₊_jj − 2 B₊_ij.
   Truncating matters: on SmolLM2-135M the top 64 dimensions held 9 % of the positive spectrum
   (most neuron pairs are nearly independent, so the configuration is close to a simplex), and
   neurons with little shared structure all project near the origin, where k-means would merge
   them; ``dims=p`` keeps the top p coordinates (Torgerson's usual form) for comparison;
3. k-means into k clusters on those distances (greedy k-means++ seeding, Lloyd iterations written
   with point-to-centroid distances from D² alone; an emptied cluster takes the point farthest from
   its centroid, so all k clusters are non-empty; ``n_init`` runs, lowest inertia kept — one by
   default, as scikit-learn does with k-means++ seeding: the M seeds below are already a search,
   judged by what matters (output KL), and restarts inside each seed measured no better
   (docs/neuron-pruning.md));
4. in every cluster one neuron is kept — exactly k neurons.

The paper clusters every neuron alike and keeps the one nearest each centroid (``keep="centroid"``,
the literal method). By default (``keep="energy"``) redundancy still comes from the MI alone, but
importance decides what a cluster costs and which neuron stays: each neuron weighs its output
energy e_j = ‖W_down[:, j]‖² · E[a_j²] (E[(a_j − ā_j)²] where the down projection has a bias, which
absorbs a neuron's mean), k-means minimises Σ_j e_j ‖x_j − μ_c(j)‖² with energy-weighted centroids —
a neuron the next layer hardly hears costs little wherever it goes, so quiet neurons join clusters
and loud, non-redundant ones keep their own — and each cluster keeps its loudest neuron, onto which
the width healer refits the rest of the cluster's contribution. Measured in docs/neuron-pruning.md.

Subsidiary condition: k-means depends on its seed, so steps 3–4 are repeated for ``seeds`` = M seeds
(the run's seed, seed + 1, …) over all layers, each candidate model is tried with the removed
neurons masked (:func:`~miprun.models.neuron_masks.masked_neurons`, no weight copy), and the one
whose output distribution on calibration tokens is closest to the original's in KL(original ‖
pruned) is kept. One reference forward pass plus one per seed, over ``kl_samples`` calibration
sequences. Models without logits (a bare encoder) are compared by the mean squared difference of
their last hidden states instead. With ``seeds=1`` no forward pass is run.

``merge=True`` (an extension, off by default) compensates what removal loses: each removed neuron's
down-projection column is added, scaled by β from a_j ≈ β a_k, to its cluster's kept neuron k. A itself only rescales the
embedding (k-means and nearest-centroid are scale-invariant); it is kept for fidelity to the paper.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from miprun.contracts import NORMALIZE, NeuronScores, NeuronSelection
from miprun.errors import MiprunError
from miprun.linalg import double_center
from miprun.models.devices import input_device, logits_batch
from miprun.probing import LOGITS_BYTES
from miprun.selectors.neuron_ranking import down_columns, output_energy


def mds_distances(similarity: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """d_ij = scale · exp(−s_ij) for i ≠ j and 0 on the diagonal, float64, symmetrised."""
    s = similarity.to(torch.float64)
    d = (s + s.T).mul_(-0.5).exp_().mul_(scale)  # in place, in the order of scale · exp(−½ (s + sᵀ))
    d.fill_diagonal_(0.0)
    return d


def torgerson_gram(distances: torch.Tensor) -> torch.Tensor:
    """B = −½ J D⁽²⁾ J, the Gram matrix classical MDS embeds (float64)."""
    return double_center(distances.to(torch.float64).pow(2)).mul_(-0.5)


def classical_mds(distances: torch.Tensor, dims: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Torgerson's classical MDS: coordinates (m × p) of the top ``dims`` positive eigenpairs of
    −½ J D² J, and how much of the positive spectrum they keep."""
    m = distances.shape[0]
    b = torgerson_gram(distances)
    dims = max(1, min(int(dims), m - 1))
    if m > 2000 and dims < m // 10:
        from scipy.sparse.linalg import eigsh

        values_np, vectors_np = eigsh(b.numpy(), k=dims, which="LA")
        values, vectors = torch.from_numpy(values_np), torch.from_numpy(vectors_np)
        positive_total = float("nan")
    else:
        values, vectors = torch.linalg.eigh(b)
        positive_total = float(values.clamp_min(0).sum())
    order = values.argsort(descending=True)[:dims]
    values, vectors = values[order], vectors[:, order]
    keep = values > 1e-12 * max(float(values[0]), 1e-300)
    values, vectors = values[keep], vectors[:, keep]
    coords = vectors * values.sqrt()
    if coords.shape[1] == 0:  # all distances equal: no structure, any coordinates are as good
        coords = torch.zeros(m, 1, dtype=torch.float64)
    kept = float(values.sum())
    return coords, {"dims": int(coords.shape[1]),
                    "spectrum_kept": round(kept / positive_total, 6) if positive_total == positive_total and positive_total > 0 else None}


def embedded_sq_dists(distances: torch.Tensor, dims: int | None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Squared Euclidean distances between the neurons in their classical-MDS embedding.

    ``dims=None`` uses every positive eigen-dimension, computed without coordinates:
    B₊ = V max(Λ, 0) Vᵀ and D²_ij = B₊_ii + B₊_jj − 2 B₊_ij (this equals d²_ij exactly when d is
    Euclidean). An integer keeps the top ``dims`` coordinates (:func:`classical_mds`). Layers wider
    than 4 096 neurons skip the eigendecomposition with ``dims=None`` and use d² itself. The
    eigendecomposition is float32, the precision of the MI matrices it starts from (half the time
    of float64 on a 1 536-neuron layer; docs/neuron-pruning.md).
    """
    m = distances.shape[0]
    if dims is not None:
        coords, info = classical_mds(distances, dims)
        return torch.cdist(coords, coords).pow(2), info
    if m > 4096:
        return distances.to(torch.float64).pow(2), {"dims": "d² (no eigendecomposition)", "spectrum_kept": None}
    values, vectors = torch.linalg.eigh(torgerson_gram(distances).to(torch.float32))
    positive = values.clamp_min(0.0)
    b_plus = ((vectors * positive) @ vectors.T).to(torch.float64)
    values = values.to(torch.float64)
    diagonal = b_plus.diagonal()
    out = (diagonal[:, None] + diagonal[None, :]).sub_(b_plus.mul_(2.0)).clamp_min_(0.0)  # B₊ᵢᵢ + B₊ⱼⱼ − 2 B₊ᵢⱼ
    out.fill_diagonal_(0.0)
    total = float(values.abs().sum())
    return out, {"dims": int((values > 1e-12 * max(float(values.max()), 1e-300)).sum()),
                 "negative_mass": round(float((-values).clamp_min(0).sum()) / total, 6) if total > 0 else 0.0}


def kmeans(
    sq_dists: torch.Tensor, k: int, *, seed: int, max_iter: int = 100, n_init: int = 1,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means into exactly ``k`` non-empty clusters of points given only by their squared Euclidean
    distances (m × m), so the embedding may have any dimension.

    With S[j, c] = Σ_{l∈c} D²_jl, the squared distance from point j to the centroid of cluster c is
    S[j, c] / |c| − Σ_{l∈c} S[l, c] / (2|c|²), which is all Lloyd's iterations need (O(m²) each).
    ``n_init`` runs of greedy k-means++ seeding (Arthur & Vassilvitskii 2007; 2 + ⌊ln k⌋ candidates per
    centre, the one lowering the potential most taken); an emptied cluster takes the point farthest
    from its centroid; the run with the lowest within-cluster sum of squares is kept. Returns
    (labels (m,), each point's squared distance to its cluster's centroid (m,)).

    With ``weights`` (m,), > 0, the weighted objective Σ_j w_j ‖x_j − μ_c(j)‖² with weighted
    centroids μ_c = Σ_{l∈c} w_l x_l / W_c: S[j, c] = Σ_{l∈c} w_l D²_jl and the distance to a centroid
    is S[j, c] / W_c − Σ_{l∈c} w_l S[l, c] / (2 W_c²); seeding draws in proportion to w_j times the
    squared distance, and an emptied cluster takes the point of largest weighted distance. Weights
    must be positive (every cluster then has a centroid); unit weights give the unweighted result.
    """
    m = sq_dists.shape[0]
    if not 1 <= k <= m:
        raise MiprunError(f"cannot form {k} clusters from {m} neurons")
    generator = torch.Generator().manual_seed(int(seed))
    d2 = sq_dists.to("cpu", torch.float64, copy=True)  # the seeding loop runs in NumPy
    d2.fill_diagonal_(0.0)  # a point is at distance 0 from itself (cdist rounds it)
    w = torch.ones(m, dtype=torch.float64) if weights is None else weights.to("cpu", torch.float64)
    if w.shape != (m,) or not bool((w > 0).all()) or not bool(torch.isfinite(w).all()):
        raise MiprunError(f"k-means weights must be {m} finite values > 0")
    weighted = d2 * w[None, :]  # column l scaled by w_l: seeding potentials and every S[j, c]
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    for _ in range(max(1, int(n_init))):
        labels, own = _lloyd(d2, weighted, _greedy_kmeanspp(weighted, k, generator, w), k, max_iter, w)
        inertia = float((w * own).sum())
        if best is None or inertia < best[0] - 1e-12:
            best = (inertia, labels, own)
    assert best is not None
    return best[1], best[2]


def _greedy_kmeanspp(weighted: torch.Tensor, k: int, generator: torch.Generator, weights: torch.Tensor) -> torch.Tensor:
    """Indices of ``k`` distinct initial centres by greedy k-means++ on ``weighted`` squared
    distances (w_l · D²_jl, zero diagonal), each point drawn in proportion to its weight times its
    squared distance to the nearest centre.

    The loop is sequential (each centre changes the next one's odds), so it runs in NumPy, whose
    per-call overhead on these short vectors is a fraction of torch's; the uniforms come from
    ``generator`` in one draw, and each centre's candidates are sampled with replacement by
    inverting the cumulative weights. The weighted distance of every point to its nearest centre
    is carried along (0 for the centres; min(w·a, w·b) = w·min(a, b) since w > 0)."""
    import numpy as np

    m = weighted.shape[0]
    trials = 2 + int(math.log(k)) if k > 1 else 1
    draws = torch.rand(k, trials, generator=generator, dtype=torch.float64).numpy()
    w = weights.numpy()
    weighted = weighted.numpy()
    first = min(int(np.searchsorted(np.cumsum(w), draws[0, 0] * w.sum(), side="right")), m - 1)
    chosen = [first]
    taken = np.zeros(m, dtype=bool)
    taken[first] = True
    potential = weighted[first].copy()  # w_l times the squared distance to the nearest centre
    potential[first] = 0.0
    for step in range(1, k):
        cumulative = np.cumsum(potential)
        total = cumulative[-1]
        if total <= 0:  # the remaining points coincide with centres: take unused ones in order
            pick = int(np.flatnonzero(~taken)[0])
        else:
            candidates = np.minimum(np.searchsorted(cumulative, draws[step] * total, side="right"), m - 1)
            potentials = np.minimum(potential[None, :], weighted[candidates]).sum(axis=1)
            pick = int(candidates[potentials.argmin()])
        chosen.append(pick)
        taken[pick] = True
        np.minimum(potential, weighted[pick], out=potential)
        potential[pick] = 0.0
    return torch.tensor(chosen)


def centroid_sq_dists(weighted: torch.Tensor, labels: torch.Tensor, k: int, weights: torch.Tensor) -> torch.Tensor:
    """(m × k) squared distances from every point to every cluster's weighted centroid (inf for an
    empty cluster), from ``weighted`` = D² with column l scaled by the weight of point l alone."""
    m = weighted.shape[0]
    sums = torch.zeros(m, k, dtype=weighted.dtype).index_add_(1, labels, weighted)  # S[j, c]
    mass = torch.zeros(k, dtype=weighted.dtype).index_add_(0, labels, weights)
    within = torch.zeros(k, dtype=weighted.dtype).index_add_(0, labels, weights * sums[torch.arange(m), labels])
    filled = mass > 0
    safe = torch.where(filled, mass, torch.ones_like(mass))
    out = sums.div_(safe).sub_(within / (2.0 * safe.pow(2)))  # in place: m × k is the largest array here
    if not bool(filled.all()):
        out.masked_fill_(~filled[None, :], float("inf"))
    return out.clamp_min_(0.0)


def _lloyd(d2: torch.Tensor, weighted: torch.Tensor, seeds: torch.Tensor, k: int, max_iter: int,
           weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd iterations from the clusters of the nearest seed until the labels stop changing
    (``weighted``: D² with column l scaled by w_l, whose columns every S[j, c] sums)."""
    labels = d2[:, seeds].argmin(dim=1)
    labels[seeds] = torch.arange(k)
    converged = False
    for _ in range(max_iter):
        dist = centroid_sq_dists(weighted, labels, k, weights)
        # min's indices (the first of ties, as argmin's) took a quarter of argmin's time on 1 536 × 1 229
        new_labels = _fill_empty(dist.min(dim=1).indices, dist, k, weights)
        converged = torch.equal(new_labels, labels)
        if converged:  # ``dist`` is already that of ``labels``
            break
        labels = new_labels
    if not converged:
        dist = centroid_sq_dists(weighted, labels, k, weights)
    return labels, dist[torch.arange(d2.shape[0]), labels]


def _fill_empty(labels: torch.Tensor, dist: torch.Tensor, k: int, weights: torch.Tensor) -> torch.Tensor:
    """Move the point of largest weighted distance to its centroid (in a cluster of ≥ 2) into each
    empty cluster."""
    labels = labels.clone()
    counts = torch.bincount(labels, minlength=k)
    own = weights * dist.gather(1, labels[:, None]).squeeze(1)
    for empty in (counts == 0).nonzero().flatten().tolist():
        movable = counts[labels] > 1
        point = int(torch.where(movable, own, torch.full_like(own, -1.0)).argmax())
        counts[labels[point]] -= 1
        labels[point] = empty
        counts[empty] = 1
        own[point] = -1.0
    return labels


KEEP = ("energy", "centroid")
"""Which neuron of a cluster stays: the one of most output energy (default) or the paper's nearest the centroid."""


def nearest_to_centroids(labels: torch.Tensor, own: torch.Tensor, k: int) -> list[int]:
    """In every cluster, the index of the point nearest its centroid (ties: lowest index), sorted."""
    return first_of_clusters(labels, own, k)


def first_of_clusters(labels: torch.Tensor, rank: torch.Tensor, k: int) -> list[int]:
    """In every cluster, the index of lowest ``rank`` (ties: lowest index), sorted; an error when
    fewer than ``k`` clusters are filled."""
    by_rank = torch.argsort(rank, stable=True)  # ties keep index order
    order = by_rank[torch.argsort(labels[by_rank], stable=True)]
    grouped = labels[order]
    first = torch.ones_like(grouped, dtype=torch.bool)
    first[1:] = grouped[1:] != grouped[:-1]
    if int(first.sum()) != k:
        raise MiprunError(f"k-means left {k - int(first.sum())} of {k} clusters empty")
    return sorted(order[first].tolist())


def energy_weights(energy: torch.Tensor) -> torch.Tensor:
    """k-means weights from output energies: the energy plus 10⁻⁶ of its mean, so that a neuron
    that sends nothing forward still weighs something and every cluster has a centroid (all ones
    when the layer sends nothing at all)."""
    energy = energy.to(torch.float64)
    floor = 1e-6 * float(energy.mean()) if energy.numel() else 0.0
    return energy + floor if floor > 0 else torch.ones_like(energy)


def merge_coefficients(acts: torch.Tensor, kept: list[int], labels: torch.Tensor) -> list[tuple[int, int, float]]:
    """For every removed neuron j, ``(j, k, β)`` with k the kept neuron of j's cluster and β the
    least-squares coefficient of a_j ≈ β a_k over the collected tokens (no intercept: a Llama down
    projection has no bias to absorb one)."""
    a = acts.to(torch.float64)
    representative = {int(labels[k]): k for k in kept}
    kept_set = set(kept)
    out = []
    for j in range(a.shape[1]):
        if j in kept_set:
            continue
        k = representative[int(labels[j])]
        power = float(a[:, k].pow(2).sum())
        beta = float(a[:, j] @ a[:, k]) / power if power > 0 else 0.0
        out.append((j, k, beta))
    return out


def _kl_reference(context: Any, samples: int) -> tuple[Any, list[torch.Tensor], str]:
    """Reference log-probabilities (or hidden states) of the unpruned model on the first ``samples``
    calibration sequences."""
    ids = context.input_ids[:samples]
    outputs = _forward(context.model, ids)
    kind = "kl" if outputs[0] is not None else "mse"
    return ids, outputs, kind


def _forward(model: Any, ids: torch.Tensor) -> list[torch.Tensor | None]:
    """Each sequence's log-probabilities (float32, CPU), or last hidden states for a model without
    logits, in batches whose float32 logits fit :data:`~miprun.probing.LOGITS_BYTES` (a batch of
    four 256-token sequences took 1.35 s against 1.62 s one at a time on SmolLM2-135M, the same
    values)."""
    device = input_device(model)
    size = logits_batch(model, ids.shape[1], len(ids), LOGITS_BYTES, element_size=4)
    results: list[torch.Tensor | None] = []
    with torch.no_grad():
        for start in range(0, len(ids), size):
            out = model(input_ids=ids[start : start + size].to(device), use_cache=False)
            logits = getattr(out, "logits", None)
            for row in (logits if logits is not None else out.last_hidden_state):
                results.append(torch.log_softmax(row.float(), dim=-1).cpu() if logits is not None else row.float().cpu())
            del out, logits
    return results


def _divergence_of(model: Any, ids: torch.Tensor, reference: list[torch.Tensor], kind: str) -> float:
    """Mean output divergence of ``model`` from ``reference``, one batch of :func:`_forward` in
    memory at a time."""
    size = logits_batch(model, ids.shape[1], len(ids), LOGITS_BYTES, element_size=4)
    total, count = 0.0, 0
    for start in range(0, len(ids), size):
        for ref, candidate in zip(reference[start : start + size], _forward(model, ids[start : start + size])):
            total += output_divergence([ref], [candidate], kind) * ref.shape[0]  # summed per sequence, as ever
            count += ref.shape[0]
    return total / max(count, 1)


def output_divergence(reference: list[torch.Tensor], candidate: list[torch.Tensor], kind: str) -> float:
    """Mean KL(reference ‖ candidate) per token of two lists of log-probabilities, or the mean squared
    difference of hidden states when ``kind == "mse"``."""
    total, count = 0.0, 0
    for ref, cand in zip(reference, candidate):
        if kind == "kl":
            total += float((ref.exp() * (ref - cand)).sum())
        else:
            total += float((ref - cand).pow(2).mean(dim=-1).sum())
        count += ref.shape[0]
    return total / max(count, 1)


class MDSClusterSelector:
    """Cluster each layer's neurons in an MDS embedding of d = A·exp(−MI); keep one per cluster.

    :param dims: MDS dimensions kept (None: every positive dimension, implicitly; p: the top p).
    :param scale: A in d = A·exp(−MI).
    :param normalize: ``auto`` (default), ``self`` or ``none``: MI divided by the self-information
        before the distances (:meth:`~miprun.contracts.NeuronScores.similarity`).
    :param keep: which neuron of each cluster stays: ``energy`` (default; the most output energy,
        needs the run's model and activations) or ``centroid`` (the paper's: nearest the centroid).
    :param n_init: k-means runs per seed (lowest within-cluster sum of squares kept; default 1).
    :param merge: compensate instead of only removing (not in the paper, off by default): every
        removed neuron j's down-projection weights are added, scaled by the least-squares β of
        a_j ≈ β a_k, to its cluster's kept neuron k (:func:`merge_coefficients`).
    :param seeds: M, the k-means seeds tried; the one whose pruned model is closest to the original
        in output KL is kept (1: no forward pass).
    :param kl_samples: calibration sequences used for the KL comparison.
    :param max_iter: Lloyd iterations per k-means run.
    :param seed: first seed (the run's seed).
    """

    name = "mds-cluster"

    def __init__(self, *, dims: int | None = None, scale: float = 1.0, normalize: str = "auto", seeds: int = 3,
                 kl_samples: int = 4, n_init: int = 1, max_iter: int = 100, merge: bool = False,
                 keep: str = "energy", seed: int = 0) -> None:
        self.merge = bool(merge)
        if keep not in KEEP:
            raise MiprunError(f"mds-cluster option keep={keep!r} must be one of {', '.join(KEEP)}")
        self.keep = keep
        if ((dims is not None and int(dims) < 1) or not float(scale) > 0 or int(seeds) < 1 or int(kl_samples) < 1 or int(max_iter) < 1
                or int(n_init) < 1):
            raise MiprunError("mds-cluster options need dims ≥ 1, scale > 0, seeds ≥ 1, kl_samples ≥ 1, "
                              "n_init ≥ 1, max_iter ≥ 1")
        if normalize not in NORMALIZE:
            raise MiprunError(f"mds-cluster option normalize={normalize!r} must be one of {', '.join(NORMALIZE)}")
        self.normalize = normalize
        self.n_init = int(n_init)
        self.dims = None if dims is None else int(dims)
        self.scale = float(scale)
        self.seeds = int(seeds)
        self.kl_samples = int(kl_samples)
        self.max_iter = int(max_iter)
        self.seed = int(seed)

    def embed(self, similarity: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Squared distances between one layer's neurons in their MDS embedding."""
        return embedded_sq_dists(mds_distances(similarity, self.scale), self.dims)

    def cluster(self, sq_dists: torch.Tensor, keep: int, seed: int,
                energy: torch.Tensor | None = None) -> tuple[list[int], torch.Tensor]:
        """One neuron per cluster of a k-means run with ``seed`` into ``keep`` clusters, and the
        labels. With ``energy``: clusters of the energy-weighted k-means (:func:`energy_weights`),
        each keeping its neuron of largest energy; without: the paper's unweighted k-means, each
        cluster keeping the neuron nearest its centroid."""
        weights = None if energy is None else energy_weights(energy)
        labels, own = kmeans(sq_dists, keep, seed=seed, max_iter=self.max_iter, n_init=self.n_init, weights=weights)
        if energy is None:
            return nearest_to_centroids(labels, own, keep), labels
        return first_of_clusters(labels, -energy, keep), labels

    def _energies(self, scores: NeuronScores, context: Any) -> list[torch.Tensor] | None:
        """Every layer's :func:`output_energy` for ``keep="energy"`` (None for ``centroid``); a
        one-line error when the run's model or activations are out of reach."""
        if self.keep == "centroid":
            return None
        acts = scores.activations if scores.activations is not None else getattr(context, "inputs", None)
        if context is None or getattr(context, "adapter", None) is None or not hasattr(acts, "acts"):
            raise MiprunError("mds-cluster keep=energy weighs neurons by their activations and down projection and "
                              "needs the run (miprun run / miprun.prune) with a neuron scorer; or pass "
                              "-o selector.keep=centroid (the paper's nearest-to-centroid)")
        energies = []
        for position, layer in enumerate(scores.layers):
            _, down = context.adapter.ffn_modules(layer)
            energies.append(output_energy(acts.acts[position], down_columns(context.adapter, layer),
                                          getattr(down, "bias", None) is not None))
        return energies

    def select(self, scores: NeuronScores, n: int, *, context: Any = None) -> NeuronSelection:
        """Remove ``n`` neurons from every layer; with several seeds, pick by output KL (needs ``context``)."""
        seeds = [self.seed + r for r in range(self.seeds)]
        if len(seeds) > 1 and context is None:
            raise MiprunError("mds-cluster with seeds > 1 needs the model (run it through the pipeline) or seeds=1")
        if self.merge and scores.activations is None:
            raise MiprunError("mds-cluster merge=True needs the collected activations (scorer neuron-mi)")
        energies = self._energies(scores, context)
        candidates: list[dict[int, list[int]]] = [{} for _ in seeds]
        merges: list[dict[int, list[tuple[int, int, float]]]] = [{} for _ in seeds]
        layer_trace: list[dict[str, Any]] = []
        for index, layer in enumerate(scores.layers):
            sq_dists, info = self.embed(scores.similarity(index, self.normalize))
            scores.release(index)  # one layer's matrices at a time
            for r, seed in enumerate(seeds):
                kept, labels = self.cluster(sq_dists, scores.widths[index] - n, seed,
                                            None if energies is None else energies[index])
                candidates[r][layer] = kept
                if self.merge:
                    merges[r][layer] = merge_coefficients(scores.activations.acts[index], kept, labels)
            layer_trace.append({"layer": layer, **info})
            del sq_dists
        divergences: list[float | None] = [None] * len(seeds)
        kind = None
        if len(seeds) > 1:
            from miprun.models.neuron_masks import masked_neurons

            ids, reference, kind = _kl_reference(context, self.kl_samples)
            context.forward_passes += 1
            for r, keep in enumerate(candidates):
                with masked_neurons(context.adapter, keep, merges[r] if self.merge else None):
                    divergences[r] = _divergence_of(context.model, ids, reference, kind)
                context.forward_passes += 1
            best = min(range(len(seeds)), key=lambda r: (divergences[r], r))
        else:
            best = 0
        trace = [{"seed": s, "divergence": d, "chosen": r == best} for r, (s, d) in enumerate(zip(seeds, divergences))]
        return NeuronSelection(
            keep=candidates[best],
            merges=merges[best] if self.merge else None,
            evaluations=len(seeds) if len(seeds) > 1 else 0,
            trace=trace,
            info={"metric": scores.metric, "divergence": kind, "seed": seeds[best], "layers": layer_trace,
                  "subsidiary": {"seeds": len(seeds), "kl_samples": self.kl_samples if len(seeds) > 1 else 0},
                  "merge": self.merge, "keep": self.keep},
        )
