"""Neuron selectors: MI selectors remove exact and noisy copies and keep the originals; MDS, k-means
and Algorithm 1 behave as specified; the magnitude and random baselines."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

from miprun.contracts import FFNActivations, NeuronScores, RunContext
from miprun.errors import MiprunError
from miprun.estimators.neuron_gaussian import NeuronGaussianEstimator
from miprun.estimators.neuron_pearson import NeuronPearsonEstimator
from miprun.estimators.neuron_renyi import NeuronRenyiEstimator
from miprun.scorers.neuron_mi import NeuronMIScorer
from miprun.selectors.mds_cluster import (
    MDSClusterSelector,
    classical_mds,
    embedded_sq_dists,
    kmeans,
    mds_distances,
    nearest_to_centroids,
)
from miprun.selectors.mi_threshold import MIThresholdSelector, threshold_prune
from miprun.selectors.neuron_magnitude import NeuronMagnitudeSelector
from miprun.selectors.neuron_random import NeuronRandomSelector

pytestmark = pytest.mark.usefixtures("one_thread")


EXACT = [(0, 12), (1, 13), (2, 14)]  # originals 0–2 and their exact copies
NOISY = {3: (15, 18), 4: (16, 19), 5: (17, 20)}  # originals 3–5, two noisy copies each


def copies_layer(n: int = 256, seed: int = 0) -> torch.Tensor:
    """21 neurons: 12 independent originals (gated-FFN-like, non-Gaussian), exact copies of 0–2 and
    two noisy copies (noise 15 % of the signal's std) of each of 3–5."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 12, generator=g)
    originals = torch.nn.functional.silu(2 * base) + 0.3 * base**2
    noisy = [originals[:, 3:6] + 0.15 * originals[:, 3:6].std(0) * torch.randn(n, 3, generator=g) for _ in range(2)]
    return torch.cat([originals, originals[:, :3].clone(), *noisy], dim=1)


def assert_copies_removed(kept: list[int]) -> None:
    kept_set = set(kept)
    assert set(range(3, 12)) <= kept_set, f"an original was removed: kept {sorted(kept_set)}"
    for original, copy in EXACT:  # exact copies are indistinguishable: exactly one of the two stays
        assert len({original, copy} & kept_set) == 1
    assert not kept_set & {c for pair in NOISY.values() for c in pair}


ESTIMATORS = {
    "renyi-1.01": lambda: NeuronRenyiEstimator(batch_size=64, mi_batches=4),
    "renyi-2": lambda: NeuronRenyiEstimator(alpha=2),
    "gaussian-copula": NeuronGaussianEstimator,
}


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("selector", ["mds-cluster", "mi-threshold"])
@pytest.mark.parametrize("data_seed", [0, 1])
def test_mi_selectors_remove_copies_and_keep_originals(estimator, selector, data_seed):
    acts = FFNActivations([7], [copies_layer(seed=data_seed)])
    scores = NeuronMIScorer().score(acts, ESTIMATORS[estimator]())
    chooser = MDSClusterSelector(seeds=1, keep="centroid") if selector == "mds-cluster" else MIThresholdSelector()
    selection = chooser.select(scores, 9)
    assert list(selection.keep) == [7] and len(selection.keep[7]) == 12
    assert_copies_removed(selection.keep[7])
    assert scores.seconds[0] >= 0 and scores.summary()["layer_info"]["7"]


def test_pearson_ablation_runs_through_the_same_selector():
    scores = NeuronMIScorer().score(FFNActivations([0], [copies_layer()]), NeuronPearsonEstimator())
    assert scores.metric == "abs-corr"
    assert_copies_removed(MDSClusterSelector(seeds=1, keep="centroid").select(scores, 9).keep[0])


def test_self_normalisation_is_what_lets_mds_see_renyi_copies():
    """Rényi MI of scalar neurons is small, so exp(−MI) barely separates copies from strangers."""
    scores = NeuronMIScorer().score(FFNActivations([0], [copies_layer()]), NeuronRenyiEstimator())
    similarity = scores.similarity(0)
    assert float(similarity[0, 12]) == pytest.approx(1.0, abs=1e-5) and float(similarity[5, 5]) == 1.0
    raw = scores.similarity(0, "none")
    assert float(raw[0, 12]) < 0.6  # raw MI of an exact copy: d = exp(−MI) > 0.55
    with pytest.raises(MiprunError, match="normalize"):
        scores.similarity(0, "max")


def test_classical_mds_recovers_a_euclidean_configuration():
    torch.manual_seed(0)
    points = torch.randn(30, 2, dtype=torch.float64)
    distances = torch.cdist(points, points)
    coords, info = classical_mds(distances, 5)
    assert info["dims"] == 2
    torch.testing.assert_close(torch.cdist(coords, coords), distances, atol=1e-6, rtol=0)
    implicit, _ = embedded_sq_dists(distances, None)  # a float32 eigendecomposition: float32's resolution
    torch.testing.assert_close(implicit, distances.pow(2), atol=1e-6 * float(distances.pow(2).max()), rtol=0)
    similarity = -torch.log(distances.clamp_min(1e-12))
    torch.testing.assert_close(mds_distances(similarity), distances, atol=1e-6, rtol=0)


def test_kmeans_finds_blobs_fills_every_cluster_and_keeps_the_centre():
    torch.manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    offsets = torch.tensor([[0.0, 0.0], [0.5, 0.0], [-0.5, 0.0], [0.0, 0.5], [0.0, -0.5]], dtype=torch.float64)
    points = torch.cat([c + offsets for c in centres])  # the first point of each blob is its centre
    d2 = torch.cdist(points, points).pow(2)
    labels, own = kmeans(d2, 3, seed=0)
    assert len(set(labels.tolist())) == 3
    assert all(len(set(labels[5 * b : 5 * b + 5].tolist())) == 1 for b in range(3))
    assert nearest_to_centroids(labels, own, 3) == [0, 5, 10]
    for k in (14, 15):
        labels, _ = kmeans(d2, k, seed=3)
        assert sorted(set(labels.tolist())) == list(range(k))
    with pytest.raises(MiprunError):
        kmeans(d2, 16, seed=0)


def test_algorithm_one_threshold_draws_then_completes_to_the_exact_count():
    torch.manual_seed(2)
    values = torch.rand(10, 10) * 0.1
    values = (values + values.T) / 2
    values[0, 1] = values[1, 0] = 0.9
    values[2, 3] = values[3, 2] = 0.8
    generator = torch.Generator().manual_seed(0)
    kept, info = threshold_prune(values, 2, 0.5, max_iterations=10_000, generator=generator)
    assert len(kept) == 8 and info["removed_by_threshold"] == 2 and info["removed_by_completion"] == 0
    assert len({0, 1} & set(kept)) == 1 and len({2, 3} & set(kept)) == 1
    kept, info = threshold_prune(values, 3, 5.0, max_iterations=50, generator=generator)
    assert len(kept) == 7 and info["removed_by_threshold"] == 0 and info["removed_by_completion"] == 3
    assert info["draws"] == 50
    with pytest.raises(MiprunError, match="quantile"):
        MIThresholdSelector(quantile=1.5)


def test_magnitude_removes_the_smallest_weights_and_random_is_seeded():
    loaded = build_tiny("llama", layers=2)
    adapter = loaded.adapter
    with torch.no_grad():
        for layer in range(2):
            producers, down = adapter.ffn_modules(layer)
            for module in producers:
                module.weight[[5, 9]] *= 1e-3
            down.weight[:, [5, 9]] *= 1e-3
    scores = NeuronScores([0, 1], [64, 64])
    context = RunContext(loaded.model, adapter, None)
    selection = NeuronMagnitudeSelector().select(scores, 2, context=context)
    assert all(5 not in kept and 9 not in kept and len(kept) == 62 for kept in selection.keep.values())
    first = NeuronRandomSelector(seed=4).select(scores, 10).keep
    assert first == NeuronRandomSelector(seed=4).select(scores, 10).keep
    assert first != NeuronRandomSelector(seed=5).select(scores, 10).keep
    assert first[0] != first[1] and all(len(v) == 54 for v in first.values())


def test_energy_keep_keeps_the_loudest_neuron_of_each_cluster_of_copies():
    """By default a cluster keeps the neuron of most output energy ‖W_down[:, j]‖²·E[a_j²]: where a
    copy feeds the next layer through larger weights than its original, the copy stays."""
    acts = copies_layer()
    width = acts.shape[1]
    loaded = build_tiny("llama", layers=1, seed=3)
    _, down = loaded.adapter.ffn_modules(0)
    assert down.weight.shape[1] >= width
    with torch.no_grad():
        down.weight.fill_(0.1)
        down.weight[:, [12, 13, 14]] = 0.3  # the exact copies of 0–2 are louder than their originals
        down.weight[:, 4] = 0.01  # original 4 is quiet: one of its noisy copies should stay instead
    others = torch.randn(acts.shape[0], down.weight.shape[1] - width, generator=torch.Generator().manual_seed(5))
    padded = torch.cat([acts, others], dim=1)  # independent neurons as loud as the rest
    inputs = FFNActivations([0], [padded])
    scores = NeuronMIScorer().score(inputs, NeuronGaussianEstimator())
    context = RunContext(loaded.model, loaded.adapter, None, inputs=inputs)
    removed = 9  # as many as there are copies
    kept = set(MDSClusterSelector(seeds=1).select(scores, removed, context=context).keep[0])
    assert {12, 13, 14} <= kept and not kept & {0, 1, 2}
    assert 4 not in kept and len(kept & {16, 19}) == 1
    assert set(range(width, down.weight.shape[1])) <= kept
    literal = set(MDSClusterSelector(seeds=1, keep="centroid").select(scores, removed, context=context).keep[0])
    assert literal != kept


def test_output_energy_is_the_weighted_second_moment_or_variance():
    from miprun.selectors.neuron_ranking import output_energy

    acts = torch.tensor([[1.0, 2.0], [3.0, 2.0]])
    columns = torch.tensor([[1.0, 0.0], [1.0, 3.0]])  # ‖w_0‖² = 2, ‖w_1‖² = 9
    assert output_energy(acts, columns, centred=False).tolist() == [2 * 5.0, 9 * 4.0]
    assert output_energy(acts, columns, centred=True).tolist() == [2 * 1.0, 0.0]  # neuron 1 is constant: a bias


def test_energy_keep_without_the_run_names_the_literal_option():
    scores = NeuronMIScorer().score(FFNActivations([0], [copies_layer()]), NeuronGaussianEstimator())
    with pytest.raises(MiprunError, match="selector.keep=centroid"):
        MDSClusterSelector(seeds=1).select(scores, 9)
    with pytest.raises(MiprunError, match="keep='middle' must be one of energy, centroid"):
        MDSClusterSelector(keep="middle")


def test_weighted_kmeans_with_unit_weights_is_the_unweighted_one_and_weights_pull_centroids():
    torch.manual_seed(2)
    points = torch.randn(40, 3, dtype=torch.float64)
    d2 = torch.cdist(points, points).pow(2)
    plain = kmeans(d2, 6, seed=3)
    unit = kmeans(d2, 6, seed=3, weights=torch.ones(40, dtype=torch.float64))
    assert torch.equal(plain[0], unit[0]) and torch.allclose(plain[1], unit[1])
    # two heavy points and eight light ones on a line, two clusters: the heavy ones get one each
    line = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [6.0], [7.0], [8.0], [9.0]], dtype=torch.float64)
    weights = torch.full((10,), 1e-6, dtype=torch.float64)
    weights[[0, 1]] = 1.0
    labels, _ = kmeans(torch.cdist(line, line).pow(2), 2, seed=0, weights=weights)
    assert labels[0] != labels[1]
    with pytest.raises(MiprunError, match="weights must be 10 finite values > 0"):
        kmeans(torch.cdist(line, line).pow(2), 2, seed=0, weights=torch.zeros(10, dtype=torch.float64))
