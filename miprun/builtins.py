"""miprun's built-in strategies and architectures, registered through the same hooks as any
third-party plugin.

Factories are given as ``"module:attribute"`` strings so that listing strategies imports nothing
heavy; each strategy lives in its own module under the package of its kind. Capabilities
(:class:`miprun.contracts.Capabilities`) are declared here, beside each name, and the run planner
reads them without importing the strategy.
"""

from __future__ import annotations

from dataclasses import replace

from miprun import hookimpl
from miprun.contracts import ArchitectureSpec

NEURON = "neuron"


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
        granularity=NEURON,
    )


@hookimpl
def miprun_register_estimators(register):
    """Register the built-in mutual-information estimators."""
    register(
        "renyi",
        "miprun.estimators.renyi:RenyiEstimator",
        description="Matrix-based Rényi α-entropy MI from Gram matrices (α=2 Frobenius fast path)",
        caveat=("as a block score it ranks blocks worse than gaussian-channel (Spearman ρ 0.70 against 0.80 "
                "on SmolLM2-135M) and its selections prune worse than the default `miprun run` "
                "(docs/estimators.md, 'The headline command')"),
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
        granularity=NEURON, pairwise=True,
    )
    register(
        "neuron-gaussian",
        "miprun.estimators.neuron_gaussian:NeuronGaussianEstimator",
        description="(neuron) All-pairs Gaussian-copula MI −½log(1−ρ²) of rank-normalised neurons (fast)",
        granularity=NEURON, pairwise=True,
    )
    register(
        "neuron-pearson",
        "miprun.estimators.neuron_pearson:NeuronPearsonEstimator",
        description="(neuron) |Pearson correlation| in place of MI (the paper's ablation baseline)",
        granularity=NEURON, pairwise=True,
    )


@hookimpl
def miprun_register_scorers(register):
    """Register the built-in scorers."""
    register(
        "block-influence",
        "miprun.scorers.block_influence:BlockInfluenceScorer",
        description="ShortGPT block influence: 1 − cosine(block input, block output), token mean",
        default_selector="greedy",
    )
    register(
        "block-mi",
        "miprun.scorers.block_mi:BlockMIScorer",
        description="MI-PRUN: importance = −MI(span input, span output) with the chosen estimator",
        needs_estimator=True, default_estimator="gaussian-channel", default_selector="fast-block-select",
    )
    register(
        "output-mi",
        "miprun.scorers.output_mi:OutputMIScorer",
        description="MI between the model output with and without the block set (runs the model per set)",
        reads_states=False, runs_model=True, needs_estimator=True, set_scores=True,
        default_estimator="gaussian-channel", default_selector="set-exchange",
    )
    register(
        "neuron-mi",
        "miprun.scorers.neuron_mi:NeuronMIScorer",
        description="(neuron) Pairwise neuron redundancy per FFN layer from a neuron estimator",
        granularity=NEURON, needs_estimator=True, pairwise=True,
        default_estimator="neuron-renyi", default_selector="mds-cluster",
    )
    register(
        "angular",
        "miprun.scorers.angular:AngularScorer",
        description="Gromov et al.: arccos(cos(span input, span output))/π, token mean or last token",
        runs_model=True, default_selector="best-span",
    )
    register(
        "ppl",
        "miprun.scorers.perplexity_drop:PerplexityDropScorer",
        description="Shortened LLaMA PPL: calibration perplexity with the block removed (T passes)",
        reads_states=False, runs_model=True, default_selector="greedy",
    )
    register(
        "taylor",
        "miprun.scorers.taylor:TaylorScorer",
        description="Shortened LLaMA Taylor+: Σ|w·∂L/∂w| per block; first 4 / last 2 blocks kept",
        reads_states=False, runs_model=True, default_selector="greedy",
    )
    register(
        "magnitude",
        "miprun.scorers.magnitude:MagnitudeScorer",
        description="Weight magnitude per block (mean |w|, L1 or L2)",
        reads_states=False, default_selector="greedy",
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
        description="MI-PRUN Algorithm 1: iterative span refinement, exact scores for the top-K candidates only",
        default_scorer="block-mi",
    )
    register(
        "brute-force",
        "miprun.selectors.brute_force:BruteForceSelector",
        description="Algorithm 1's refinement with exact scores for every candidate span",
        default_scorer="block-mi",
    )
    register(
        "set-exchange",
        "miprun.selectors.set_exchange:SetExchangeSelector",
        description="Fast-Block-Select's set variant: refine the whole pruning set by exchange on set scores",
        set_scores=True, default_scorer="output-mi",
    )
    register(
        "best-span",
        "miprun.selectors.best_span:BestSpanSelector",
        description="The contiguous span of N blocks with the lowest importance (Gromov et al.)",
        default_scorer="angular",
    )
    register(
        "sleb",
        "miprun.selectors.sleb:SLEBSelector",
        description="SLEB: remove the block whose removal raises calibration loss least, re-score, repeat",
        needs_scores=False, runs_model=True,
    )
    register(
        "laco",
        "miprun.selectors.laco:LayerCollapseSelector",
        description="LaCo: merge following layers into a base while the output stays similar",
        needs_scores=False, runs_model=True, default_surgeon="laco",
    )
    register(
        "random",
        "miprun.selectors.random_blocks:RandomSelector",
        description="N blocks drawn uniformly at random (seeded)",
        needs_scores=False,
    )
    register(
        "given",
        "miprun.selectors.given_blocks:GivenSelector",
        description="The blocks named by -o selector.blocks=13-18,25 (a paper's or an earlier run's set)",
        needs_scores=False,
    )
    register(
        "mds-cluster",
        "miprun.selectors.mds_cluster:MDSClusterSelector",
        description="(neuron) MDS of d=A·exp(−MI), k-means, keep the neuron nearest each centroid; best of M seeds by KL",
        granularity=NEURON, runs_model=True, default_scorer="neuron-mi",
    )
    register(
        "mi-threshold",
        "miprun.selectors.mi_threshold:MIThresholdSelector",
        description="(neuron) Huang et al. Algorithm 1: drop one neuron of random pairs with MI above T_r",
        granularity=NEURON, default_scorer="neuron-mi",
    )
    register(
        "neuron-magnitude",
        "miprun.selectors.neuron_magnitude:NeuronMagnitudeSelector",
        description="(neuron) Baseline: remove the neurons with the smallest weight norm",
        granularity=NEURON, needs_scores=False,
    )
    register(
        "neuron-wanda",
        "miprun.selectors.neuron_wanda:NeuronWandaSelector",
        description="(neuron) Baseline: Wanda-sp, remove the neurons of smallest ‖activation‖ · Σ|down weights|",
        granularity=NEURON, needs_scores=False, reads_states=True,
    )
    register(
        "neuron-flap",
        "miprun.selectors.neuron_flap:NeuronFlapSelector",
        description="(neuron) FLAP fluctuation, remove the neurons of smallest Var(activation) · ‖down column‖² (width default)",
        granularity=NEURON, needs_scores=False, reads_states=True,
    )
    register(
        "neuron-mi-energy",
        "miprun.selectors.neuron_mi_energy:NeuronMIEnergySelector",
        description="(neuron) Output energy discounted by Gaussian MI with the kept neurons, removed greedily (OBS form)",
        granularity=NEURON, needs_scores=False, reads_states=True,
    )
    register(
        "neuron-random",
        "miprun.selectors.neuron_random:NeuronRandomSelector",
        description="(neuron) Baseline: remove random neurons (seeded)",
        granularity=NEURON, needs_scores=False,
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
        granularity=NEURON,
    )
    register(
        "laco",
        "miprun.surgeons.laco:LayerCollapseSurgeon",
        description="LaCo: fold each removed block's parameter differences into the kept block before it",
    )


@hookimpl
def miprun_register_healers(register):
    """Register the built-in healers."""
    register(
        "linear",
        "miprun.healers.refit:refit_healer",
        description="Refit the FFN down projection before each cut in closed form (block default)",
        heals=("remove-blocks",),
    )
    register(
        "neuron-linear",
        "miprun.healers.neuron_refit:NeuronRefitHealer",
        description="(neuron) Refit each FFN's down projection on the neurons it keeps, in closed form (neuron default)",
        granularity=NEURON,
        heals=("slice-ffn",),
    )
    register(
        "replaceme",
        "miprun.healers.replaceme:replaceme_healer",
        description="ReplaceMe: a hidden×hidden map on the FFN output before each cut, folded into it",
        heals=("remove-blocks",),
    )


_LLAMA_LIKE = ArchitectureSpec(blocks=("model.layers", "layers"))
_POST_NORMS = ArchitectureSpec(blocks=("model.layers", "layers"), ffn_output_norm="post_feedforward_layernorm",
                               attention_output_norm="post_attention_layernorm")
_PARALLEL = ArchitectureSpec(blocks=("model.layers", "layers"), attention_output="")  # attention and FFN side by side
_TRANSFORMER_H = ArchitectureSpec(blocks=("transformer.h", "h"), per_layer_fields=())  # GPT-2's layout and its heirs


@hookimpl
def miprun_register_architectures(register):
    """Register the built-in architectures."""
    for model_type in ("llama", "mistral", "qwen2", "qwen3", "gemma", "olmo", "helium", "seed_oss", "ministral",
                       "ministral3", "ernie4_5", "hunyuan_v1_dense", "cwm", "vaultgemma",
                       "internlm3", "exaone", "iquestcoder"):
        register(model_type, _LLAMA_LIKE, description="decoder blocks at model.layers, gated FFN")
    register("qwen3_5_text", replace(_LLAMA_LIKE, attention_output="self_attn.o_proj|linear_attn.out_proj"),
             description="Qwen3.5: model.layers, gated FFN, full and linear (Gated DeltaNet) attention blocks")
    register("lfm2", replace(_LLAMA_LIKE, layer_index_fields=("full_attn_idxs",),
                             ffn=("feed_forward.w1", "feed_forward.w3", "feed_forward.w2"), ffn_output="feed_forward.w2",
                             ffn_size_settings=(("block_auto_adjust_ff_dim", False),),
                             attention_output="self_attn.out_proj|conv.out_proj"),
             description="LFM2: model.layers, short-convolution and attention blocks (layer_types), gated FFN w1/w3/w2")
    register("smollm3", replace(_LLAMA_LIKE, per_layer_fields=("layer_types", "no_rope_layers")),
             description="SmolLM3: model.layers, gated FFN, per-layer RoPE switch")
    register("stablelm", replace(_LLAMA_LIKE, parallel_fields=("use_parallel_residual",)),
             description="StableLM: model.layers, gated FFN (parallel attention and FFN where the config says so)")
    register("granite", replace(_LLAMA_LIKE, residual_scale="residual_multiplier"),
             description="Granite: model.layers, gated FFN, attention and FFN outputs scaled before the residual add")
    register("granite_swa", replace(_LLAMA_LIKE, residual_scale="residual_multiplier",
                                    per_layer_fields=("layer_types", "layer_rope_theta")),
             description="Granite SWA: as Granite, with per-layer sliding-window and RoPE settings")
    register("minicpm3", replace(_LLAMA_LIKE, depth_scale="scale_depth"),
             description="MiniCPM3: model.layers, gated FFN, updates scaled by scale_depth / √(blocks) before the add")
    register("hyperclovax", replace(_LLAMA_LIKE, residual_scale="residual_multiplier", ffn_output_norm="post_norm2",
                                    attention_output_norm="post_norm1"),
             description="HyperCLOVA X: model.layers, gated FFN, optional output norms, outputs scaled before the add")
    for model_type in ("arcee", "apertus", "apertus1p5_text", "nemotron", "jais2"):
        register(model_type, replace(_LLAMA_LIKE, ffn=("mlp.up_proj", "mlp.down_proj")),
                 description="decoder blocks at model.layers, ungated FFN up_proj/down_proj")
    register("starcoder2", replace(_LLAMA_LIKE, ffn=("mlp.c_fc", "mlp.c_proj"), ffn_output="mlp.c_proj"),
             description="StarCoder2: model.layers, c_fc/c_proj FFN")
    for model_type in ("gemma2", "gemma3_text"):
        register(model_type, _POST_NORMS, description="decoder blocks at model.layers, gated FFN normalised before the residual add")
    for model_type in ("olmo2", "olmo3", "exaone4"):
        register(model_type, _POST_NORMS, description="decoder blocks at model.layers, attention and FFN outputs normalised "
                                                      "before the residual add")
    for model_type in ("cohere", "cohere2"):
        register(model_type, _PARALLEL, description="Cohere: model.layers, parallel attention and gated FFN")
    register("phi", replace(_PARALLEL, ffn=("mlp.fc1", "mlp.fc2"), ffn_output="mlp.fc2"),
             description="Phi-1/1.5/2: model.layers, parallel attention and fc1/fc2 FFN")
    register(
        "opt",
        ArchitectureSpec(blocks=("model.decoder.layers", "decoder.layers"), per_layer_fields=(),
                         ffn=("fc1", "fc2"), ffn_size_field="ffn_dim", ffn_output="fc2",
                         attention_output="self_attn.out_proj"),
        description="OPT: model.decoder.layers, fc1/fc2 FFN",
    )
    register(
        "gpt_neox",
        ArchitectureSpec(blocks=("gpt_neox.layers", "layers"), per_layer_fields=(),
                         ffn=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"), ffn_output="mlp.dense_4h_to_h",
                         attention_output="attention.dense", parallel_fields=("use_parallel_residual",)),
        description="GPT-NeoX / Pythia: gpt_neox.layers, parallel attention and FFN (as most configs set)",
    )
    register("falcon", replace(_TRANSFORMER_H, ffn=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"), ffn_size_field="ffn_hidden_size",
                               ffn_output="mlp.dense_4h_to_h", attention_output="self_attention.dense",
                               parallel_fields=("parallel_attn", "new_decoder_architecture")),
             description="Falcon: transformer.h, dense_h_to_4h/dense_4h_to_h FFN")
    register("gptj", replace(_TRANSFORMER_H, ffn=("mlp.fc_in", "mlp.fc_out"), ffn_size_field="n_inner",
                             ffn_output="mlp.fc_out", attention_output=""),
             description="GPT-J: transformer.h, parallel attention and fc_in/fc_out FFN")
    register("bloom", replace(_TRANSFORMER_H, ffn=(), ffn_output="mlp.dense_4h_to_h", attention_output="self_attention.dense",
                              ffn_note="BLOOM's config fixes every FFN at 4 × hidden_size, so a narrower FFN would not load"),
             description="BLOOM: transformer.h (blocks only)")
    fused = ("mlp.gate_up_proj", "mlp.down_proj")  # gate and up stacked in one matrix, sliced chunk by chunk
    for model_type, family in (("phi3", "Phi-3 / Phi-4-mini"), ("glm", "GLM-4 (glm)")):
        register(model_type, replace(_LLAMA_LIKE, ffn=fused), description=f"{family}: model.layers, fused gate/up FFN")
    register("glm4", replace(_LLAMA_LIKE, ffn=fused, ffn_output_norm="post_mlp_layernorm",
                             attention_output_norm="post_self_attn_layernorm"),
             description="GLM-4 (glm4): model.layers, fused gate/up FFN, outputs normalised before the residual add")
    experts = ArchitectureSpec(blocks=("model.layers", "layers"), ffn=(), ffn_output="mlp.experts",
                               ffn_note="its FFN is a mixture of experts (mlp.experts), one width per expert, which "
                                        "miprun does not prune neuron by neuron")
    register("mixtral", experts, description="Mixtral (MoE): model.layers (blocks only)")
    register("olmoe", experts, description="OLMoE: model.layers (blocks only)")
    register("qwen3_moe", replace(experts, layer_index_fields=("mlp_only_layers",), period_fields=("decoder_sparse_step",)),
             description="Qwen3-MoE: model.layers (blocks only; dense-layer indices renumbered)")
    summed = replace(experts, ffn_output="mlp",  # routed experts and shared ones summed in one module
                     ffn_output_parts=("experts", "shared_experts.down_proj", "shared_expert.down_proj",
                                       "shared_mlp.down_proj", "down_proj"))
    register("qwen2_moe", replace(summed, layer_index_fields=("mlp_only_layers",), period_fields=("decoder_sparse_step",)),
             description="Qwen2-MoE / Qwen1.5-MoE: model.layers (blocks only; routed and shared experts healed together)")
    register("qwen3_5_moe_text", replace(summed, attention_output="self_attn.o_proj|linear_attn.out_proj"),
             description="Qwen3.5-MoE: model.layers (blocks only; full and linear attention, routed and shared experts)")
    for model_type, family in (("glm4_moe", "GLM-4.5 / GLM-4.6"), ("glm4_moe_lite", "GLM-4 MoE Lite"),
                               ("deepseek_v3", "DeepSeek-V3 / Kimi K2"), ("deepseek_v2", "DeepSeek-V2 / V2-Lite / Coder-V2"),
                               ("dots1", "dots.llm1"), ("exaone_moe", "EXAONE MoE")):
        register(model_type, replace(summed, prefix_count_fields=("first_k_dense_replace",),
                                     per_layer_fields=("layer_types", "mlp_layer_types")),
                 description=f"{family}: model.layers (blocks only; first dense blocks recounted, shared experts)")
    register("cohere2_moe", replace(summed, attention_output="", per_layer_fields=("layer_types", "mlp_layer_types")),
             description="Cohere 2 MoE: model.layers (blocks only; parallel attention and mixture of experts)")
    register("ernie4_5_moe", replace(summed, prefix_count_fields=("moe_layer_start_index",),
                                     last_index_fields=("moe_layer_end_index",), period_fields=("moe_layer_interval",)),
             description="ERNIE-4.5-MoE: model.layers (blocks only; the range of expert blocks renumbered, shared experts)")
    for model_type, family in (("solar_open", "Solar Open"), ("hunyuan_v1_moe", "Hunyuan MoE"), ("phimoe", "Phi-3.5-MoE"),
                               ("minimax_m2", "MiniMax-M2"), ("mellum", "Mellum")):
        register(model_type, replace(summed, per_layer_fields=("layer_types", "mlp_layer_types", "num_experts", "moe_topk")),
                 description=f"{family}: model.layers (blocks only; mixture of experts)")
    register("granitemoe", replace(experts, ffn_output="block_sparse_moe.experts", residual_scale="residual_multiplier"),
             description="Granite-MoE: model.layers (blocks only; updates scaled by residual_multiplier)")
    register("gpt_oss", experts, description="gpt-oss: model.layers (blocks only; experts with biases, stored in × out)")
    register(
        "gemma3",
        ArchitectureSpec(
            blocks=("model.language_model.layers", "language_model.layers", "model.language_model.model.layers"),
            config="text_config", ffn_output_norm="post_feedforward_layernorm",
            attention_output_norm="post_attention_layernorm",
        ),
        description="Gemma 3 multimodal: the language model's blocks, text_config",
    )
    register("gpt2", replace(_TRANSFORMER_H, ffn=("mlp.c_fc", "mlp.c_proj"), ffn_size_field="n_inner",
                             ffn_output="mlp.c_proj", attention_output="attn.c_proj"),
             description="GPT-2: transformer.h, Conv1D FFN")
    register("gpt_bigcode", replace(_TRANSFORMER_H, ffn=("mlp.c_fc", "mlp.c_proj"), ffn_size_field="n_inner",
                                    ffn_output="mlp.c_proj", attention_output="attn.c_proj"),
             description="GPT-BigCode (SantaCoder, StarCoder 1): transformer.h, c_fc/c_proj FFN, multi-query attention")
    register("codegen", replace(_TRANSFORMER_H, ffn=("mlp.fc_in", "mlp.fc_out"), ffn_size_field="n_inner",
                                ffn_output="mlp.fc_out", attention_output=""),
             description="CodeGen: transformer.h, parallel attention and fc_in/fc_out FFN")
    register("gpt_neo", replace(_TRANSFORMER_H, per_layer_fields=("attention_layers",), run_length_fields=("attention_types",),
                                ffn=("mlp.c_fc", "mlp.c_proj"), ffn_output="mlp.c_proj",
                                attention_output="attn.attention.out_proj"),
             description="GPT-Neo: transformer.h, global and local attention blocks, c_fc/c_proj FFN")
    register(
        "bert",
        ArchitectureSpec(blocks=("bert.encoder.layer", "encoder.layer"), per_layer_fields=(),
                         ffn=("intermediate.dense", "output.dense"), ffn_output="", attention_output=""),
        description="BERT encoders (width pruning)",
    )
