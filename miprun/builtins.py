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
    register(
        "ffn-activations",
        "miprun.collectors.ffn_activations:FFNActivationsCollector",
        description="(neuron) Input of every FFN down projection (after gating), token-subsampled, float32 on CPU",
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
        "gaussian-channel",
        "miprun.estimators.gaussian_channel:GaussianChannelEstimator",
        description="Per-token additive Gaussian channel MI ½log(‖y‖²/‖y−x‖²) (block default)",
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
    register(
        "neuron-renyi",
        "miprun.estimators.neuron_renyi:NeuronRenyiEstimator",
        description="(neuron) All-pairs Rényi α-MI of scalar neurons, α=1.01, Scott + kernel-alignment widths (EMA)",
    )
    register(
        "neuron-gaussian",
        "miprun.estimators.neuron_gaussian:NeuronGaussianEstimator",
        description="(neuron) All-pairs Gaussian-copula MI −½log(1−ρ²) of rank-normalised neurons (fast)",
    )
    register(
        "neuron-pearson",
        "miprun.estimators.neuron_pearson:NeuronPearsonEstimator",
        description="(neuron) |Pearson correlation| in place of MI (the paper's ablation baseline)",
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
    register(
        "output-mi",
        "miprun.scorers.output_mi:OutputMIScorer",
        description="MI between the model output with and without the block set (T + 1 passes; FBS default)",
    )
    register(
        "neuron-mi",
        "miprun.scorers.neuron_mi:NeuronMIScorer",
        description="(neuron) Pairwise neuron redundancy per FFN layer from a neuron estimator",
    )
    register(
        "angular",
        "miprun.scorers.angular:AngularScorer",
        description="Gromov et al.: arccos(cos(span input, span output))/π, token mean or last token",
    )
    register(
        "ppl",
        "miprun.scorers.perplexity_drop:PerplexityDropScorer",
        description="Shortened LLaMA PPL: calibration perplexity with the block removed (T passes)",
    )
    register(
        "taylor",
        "miprun.scorers.taylor:TaylorScorer",
        description="Shortened LLaMA Taylor+: Σ|w·∂L/∂w| per block; first 4 / last 2 blocks kept",
    )
    register(
        "magnitude",
        "miprun.scorers.magnitude:MagnitudeScorer",
        description="Weight magnitude per block (mean |w|, L1 or L2)",
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
    register(
        "mds-cluster",
        "miprun.selectors.mds_cluster:MDSClusterSelector",
        description="(neuron) MDS of d=A·exp(−MI), k-means, keep the neuron nearest each centroid; best of M seeds by KL",
    )
    register(
        "mi-threshold",
        "miprun.selectors.mi_threshold:MIThresholdSelector",
        description="(neuron) Huang et al. Algorithm 1: drop one neuron of random pairs with MI above T_r",
    )
    register(
        "neuron-magnitude",
        "miprun.selectors.neuron_magnitude:NeuronMagnitudeSelector",
        description="(neuron) Baseline: remove the neurons with the smallest weight norm",
    )
    register(
        "neuron-random",
        "miprun.selectors.neuron_random:NeuronRandomSelector",
        description="(neuron) Baseline: remove random neurons (seeded)",
    )
    register(
        "best-span",
        "miprun.selectors.best_span:BestSpanSelector",
        description="The contiguous span of N blocks with the lowest importance (Gromov et al.)",
    )
    register(
        "sleb",
        "miprun.selectors.sleb:SLEBSelector",
        description="SLEB: remove the block whose removal raises calibration loss least, re-score, repeat",
    )
    register(
        "laco",
        "miprun.selectors.laco:LayerCollapseSelector",
        description="LaCo: merge following layers into a base while the output stays similar",
    )
    register(
        "random",
        "miprun.selectors.random_blocks:RandomSelector",
        description="N blocks drawn uniformly at random (seeded)",
    )


@hookimpl
def miprun_register_surgeons(register):
    """Register the built-in surgeons."""
    register(
        "remove-blocks",
        "miprun.surgeons.remove_blocks:RemoveBlocksSurgeon",
        description="Delete whole decoder blocks, re-index per-layer state, update the config",
    )
    register(
        "slice-ffn",
        "miprun.surgeons.slice_ffn:SliceFFNSurgeon",
        description="(neuron) Remove FFN neurons (gate/up rows, down columns; GPT-2 Conv1D, BERT); update intermediate_size",
    )
    register(
        "laco",
        "miprun.surgeons.laco:LayerCollapseSurgeon",
        description="LaCo: fold each removed block's parameter differences into the kept block before it",
    )
