"""miprun's built-in strategies, registered through the same hooks as any third-party plugin.

Factories are given as ``"module:attribute"`` strings so that listing strategies imports nothing
heavy; each strategy lives in its own module under the package of its kind.
"""

from __future__ import annotations

from miprun import hookimpl


@hookimpl
def miprun_register_collectors(register):
    """Register the built-in collectors."""
    register(
        "hidden-states",
        "miprun.collectors.hidden_states:HiddenStatesCollector",
        description="Residual stream at every block boundary (before the final norm), float32 on CPU",
    )


@hookimpl
def miprun_register_estimators(register):
    """Register the built-in mutual-information estimators."""
    register(
        "renyi",
        "miprun.estimators.renyi:RenyiEstimator",
        description="Matrix-based Rényi α-entropy MI from Gram matrices (α=2 Frobenius fast path)",
    )
    register(
        "ksg",
        "miprun.estimators.ksg:KSGEstimator",
        description="Kraskov–Stögbauer–Grassberger k-NN MI (algorithm 1), optional projection",
    )
    register(
        "gaussian",
        "miprun.estimators.gaussian:GaussianEstimator",
        description="Gaussian log-det MI with Wishart bias correction and optional PCA rank",
    )


@hookimpl
def miprun_register_scorers(register):
    """Register the built-in scorers."""
    register(
        "block-influence",
        "miprun.scorers.block_influence:BlockInfluenceScorer",
        description="ShortGPT block influence: 1 − cosine(block input, block output), token mean",
    )
    register(
        "block-mi",
        "miprun.scorers.block_mi:BlockMIScorer",
        description="MI-PRUN: importance = −MI(span input, span output) with the chosen estimator",
    )


@hookimpl
def miprun_register_selectors(register):
    """Register the built-in selectors."""
    register(
        "greedy",
        "miprun.selectors.greedy:GreedySelector",
        description="The N blocks with the lowest single-block importance",
    )
    register(
        "fast-block-select",
        "miprun.selectors.fast_block_select:FastBlockSelector",
        description="MI-PRUN Algorithm 1: iterative span refinement, exact scores for top-K only",
    )
    register(
        "brute-force",
        "miprun.selectors.brute_force:BruteForceSelector",
        description="Same refinement as fast-block-select with exact scores for every candidate",
    )


@hookimpl
def miprun_register_surgeons(register):
    """Register the built-in surgeons."""
    register(
        "remove-blocks",
        "miprun.surgeons.remove_blocks:RemoveBlocksSurgeon",
        description="Delete whole decoder blocks, re-index per-layer state, update the config",
    )
