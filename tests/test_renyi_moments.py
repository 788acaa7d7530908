"""The moments path of ``neuron-renyi``: exact order-2/3 joint entropies of every pair from two matrix
products, and the all-pairs α = 1.01 MI it predicts from them against the literal spectrum of every pair."""

from __future__ import annotations

import pytest
import torch

from miprun.errors import MiprunError
from miprun.estimators.neuron_mi import renyi_entropies, scalar_sq_dists
from miprun.estimators.neuron_renyi import NeuronRenyiEstimator
from miprun.estimators.renyi_moments import JointEntropyMap, joint_entropies_23, triple_count

pytestmark = pytest.mark.usefixtures("one_thread")


def _grams(m: int, n: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    x = torch.randn(n, m, dtype=torch.float64)
    widths = 0.5 + torch.rand(m, dtype=torch.float64)
    return torch.exp(-scalar_sq_dists(x) / (2.0 * widths.pow(2)[:, None, None]))


def test_features_hold_no_subnormal_numbers_and_the_entropies_stay_exact():
    """Tokens far apart give kernel values whose order-3 products underflow into float32's
    subnormal range, which CPUs multiply far slower; those features count as zero
    (kernels.PRODUCT_FLOOR), and the entropies still equal the float64 moments of every pair."""
    from miprun.estimators.kernels import PRODUCT_FLOOR
    from miprun.estimators.renyi_moments import pair_features, triple_features

    torch.manual_seed(3)
    x = torch.randn(12, 5, dtype=torch.float64) * torch.tensor([1.0, 3.0, 5.0, 8.0, 12.0], dtype=torch.float64)
    grams = torch.exp(-scalar_sq_dists(x) / 2.0)  # unit widths: many pairs of tokens many widths apart
    tiny = torch.finfo(torch.float32).tiny
    raw = grams.to(torch.float32)
    assert bool(((raw != 0) & (raw.abs() < PRODUCT_FLOOR)).any()), "the test needs kernel values below the floor"
    for features in (pair_features(grams), triple_features(grams)):
        assert not bool(((features != 0) & (features.abs() < PRODUCT_FLOOR)).any())
        assert PRODUCT_FLOOR**2 >= tiny  # a product of two kept features is a normal float32
    s2, s3 = joint_entropies_23(grams)
    n = grams.shape[-1]
    for i in range(5):
        for j in range(5):
            a = grams[i] * grams[j] / n
            assert float(s2[i, j]) == pytest.approx(-float(torch.trace(a @ a).log()), abs=1e-5)
            assert float(s3[i, j]) == pytest.approx(-0.5 * float(torch.trace(a @ a @ a).log()), abs=1e-5)


def test_order_two_and_three_joint_entropies_equal_the_spectrum_of_every_pair():
    grams = _grams(7, 11, seed=0)
    s2, s3 = joint_entropies_23(grams)
    assert triple_count(11) == 165
    for i in range(7):
        for j in range(7):
            joint = (grams[i] * grams[j])[None]
            assert float(s2[i, j]) == pytest.approx(float(renyi_entropies(joint, 2.0)[0]), abs=1e-5)
            assert float(s3[i, j]) == pytest.approx(float(renyi_entropies(joint, 3.0)[0]), abs=1e-5)


def test_the_map_recovers_a_linear_law_and_reports_its_fit():
    torch.manual_seed(3)
    marginal = torch.rand(50, 3, dtype=torch.float64)
    mapping = JointEntropyMap(marginal)
    a, b = torch.randint(0, 50, (400,)), torch.randint(0, 50, (400,))
    s2, s3 = torch.rand(400, dtype=torch.float64), torch.rand(400, dtype=torch.float64)
    features = mapping.features(s2, s3, a, b)
    target = 0.3 + 1.2 * s2 - 0.4 * s3 + 0.7 * (marginal[a, 0] + marginal[b, 0])
    fit = mapping.fit(features, target)
    assert fit["rmse"] < 1e-4 and fit["r2"] > 0.9999
    torch.testing.assert_close(mapping.predict(s2, s3, a, b), target, atol=1e-4, rtol=0)


def test_the_map_predicts_a_block_of_pairs_as_its_standardised_features_combine():
    """``predict`` sums the fitted terms one by one: for a block of pairs (rows × columns) it equals
    the standardised feature rows times the coefficients, the form the fit solves for."""
    torch.manual_seed(5)
    marginal = torch.rand(30, 3, dtype=torch.float64)
    mapping = JointEntropyMap(marginal)
    a, b = torch.randint(0, 30, (300,)), torch.randint(0, 30, (300,))
    s2, s3 = torch.rand(300, dtype=torch.float64), torch.rand(300, dtype=torch.float64)
    mapping.fit(mapping.features(s2, s3, a, b), torch.randn(300, dtype=torch.float64))
    rows, cols = torch.arange(3, 9), torch.arange(30)
    b2, b3 = torch.rand(6, 30, dtype=torch.float64), torch.rand(6, 30, dtype=torch.float64)
    features = mapping.features(b2.reshape(-1), b3.reshape(-1), rows.repeat_interleave(30), cols.repeat(6))
    expected = ((features - mapping.mean) / mapping.scale) @ mapping.coef
    torch.testing.assert_close(mapping.predict(b2, b3, rows[:, None], cols[None, :]), expected.reshape(6, 30),
                               atol=1e-12, rtol=1e-12)


def _layer(m: int, n_tokens: int = 256) -> torch.Tensor:
    """A layer with families of related neurons (copies through different non-linearities) and noise."""
    torch.manual_seed(4)
    base = torch.randn(n_tokens, m // 4, dtype=torch.float64)
    parts = [base, torch.tanh(2 * base) + 0.3 * torch.randn_like(base), base.pow(3) + 0.5 * torch.randn_like(base),
             torch.randn(n_tokens, m - 3 * (m // 4), dtype=torch.float64)]
    return torch.cat(parts, dim=1)


def test_moments_path_tracks_the_literal_spectrum_of_every_pair():
    x = _layer(128)
    exact_info: dict = {}
    exact = NeuronRenyiEstimator(pairs="exact").pairwise(x, info=exact_info).double()
    info: dict = {}
    fast = NeuronRenyiEstimator(partners=8, calibration=2048).pairwise(x, info=info).double()
    assert exact_info["pairs"] == "exact" and exact_info["exact_pair_fraction"] == 1.0
    assert info["pairs"] == "moments" and info["exact_pair_fraction"] < 0.5 and info["fit_r2"] > 0.98
    torch.testing.assert_close(fast.diagonal(), exact.diagonal())  # self-information is always exact
    rows, cols = torch.triu_indices(128, 128, 1)
    a, b = exact[rows, cols], fast[rows, cols]
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.98
    assert float((a - b).abs().mean()) < 0.2 * float(a.std())
    # every neuron's most dependent partners (MI over self-information, what mds-cluster compares) are
    # computed exactly, so the strongest pairs agree exactly
    scale = exact.diagonal().sqrt()
    top = (a / (scale[rows] * scale[cols])).topk(20).indices
    torch.testing.assert_close(b[top], a[top], atol=1e-6, rtol=0)
    # deterministic
    torch.testing.assert_close(NeuronRenyiEstimator(partners=8, calibration=2048).pairwise(x).double(), fast)


def test_by_default_only_the_calibration_pairs_get_a_spectrum_and_the_map_still_tracks_every_pair():
    x = _layer(128)
    exact = NeuronRenyiEstimator(pairs="exact").pairwise(x).double()
    info: dict = {}
    fast = NeuronRenyiEstimator(calibration=2048).pairwise(x, info=info).double()  # partners=0, the default
    assert info["pairs"] == "moments" and info["exact_pair_fraction"] == round(2048 / (128 * 127 / 2), 4)
    torch.testing.assert_close(fast.diagonal(), exact.diagonal())
    rows, cols = torch.triu_indices(128, 128, 1)
    a, b = exact[rows, cols], fast[rows, cols]
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.98
    assert int((a == b).sum()) == 2048  # the calibration pairs, and no others, are the literal values


def test_small_layers_and_large_batches_fall_back_to_every_pair_exactly():
    x = _layer(40)
    info: dict = {}
    fast = NeuronRenyiEstimator().pairwise(x, info=info)  # 2048 calibration pairs > 780 pairs
    assert info["pairs"] == "exact"
    torch.testing.assert_close(fast, NeuronRenyiEstimator(pairs="exact").pairwise(x))
    with pytest.raises(MiprunError, match="pairs"):
        NeuronRenyiEstimator(pairs="some")
    with pytest.raises(MiprunError, match="calibration"):
        NeuronRenyiEstimator(calibration=3)


def test_exact_pairs_are_cut_into_equal_chunks_per_thread_and_their_values_do_not_depend_on_it(monkeypatch):
    """``_exact_at`` cuts the pairs into as many equal chunks as a multiple of ``workers`` (no
    thread left with a remainder's worth while another has a full chunk), and the entropies are
    the same bit for bit whatever the threads and chunks."""
    grams = _grams(24, 16, seed=5).to(torch.float32)
    a, b = torch.triu_indices(24, 24, 1)
    sizes: list[int] = []
    estimator = NeuronRenyiEstimator(workers=2)
    monkeypatch.setattr(estimator, "_max_pairs", lambda n: 100)  # 276 pairs: chunks of at most 100
    original = estimator._joint_entropies

    def counted(grams, chunks):
        chunks = list(chunks)
        sizes.extend(len(pair[0]) for pair in chunks)
        return original(grams, iter(chunks))

    monkeypatch.setattr(estimator, "_joint_entropies", counted)
    two = estimator._exact_at(grams, a, b)
    assert sizes == [69, 69, 69, 69]
    one = NeuronRenyiEstimator(workers=1)._exact_at(grams, a, b)  # one chunk of 276
    assert torch.equal(one, two)
    assert torch.equal(one, renyi_entropies(grams[a] * grams[b], 1.01))
