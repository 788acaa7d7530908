"""How an architecture lays out its blocks: what a plugin registers to make a model family prunable.

An :class:`ArchitectureSpec` is registered for a ``config.model_type`` through the
``miprun_register_architectures`` hook (built-ins go through it too); the adapter in
:mod:`miprun.models.adapters` is the only code that reads it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchitectureSpec:
    """Layout of one family of architectures.

    :param blocks: dotted paths (from the top-level model) to the ``ModuleList`` of blocks; the
        first that exists is used (causal-LM and bare-backbone classes differ by a prefix).
    :param config: dotted path from ``model.config`` to the sub-config holding the layer count
        (empty for the top-level config).
    :param per_layer_fields: config fields holding one entry per layer, sliced on removal.
    :param ffn: names inside a block of the feed-forward up/gate/down projections (for width pruning);
        the last one is the down projection, the others produce the FFN's hidden neurons. Empty
        when the family's FFN cannot be sliced neuron by neuron (then ``ffn_note`` says why).
    :param ffn_size_field: config field holding the FFN width (``intermediate_size``; GPT-2 ``n_inner``).
    :param ffn_size_settings: ``(field, value)`` pairs written to the config with a new FFN width,
        where the config would otherwise not read ``ffn_size_field`` as the width itself (LFM2 derives
        it from ``intermediate_size`` by a rounding rule unless ``block_auto_adjust_ff_dim`` is false).
    :param ffn_note: why neuron pruning is refused when ``ffn`` is empty (shown to the user).
    :param ffn_output: name inside a block of the module whose output the FFN adds to the stream
        (the down projection; Mixtral's ``mlp.experts``): where healing folds its fit. Empty when
        no fit can be folded (post-norm blocks such as BERT's, which normalise after the residual add).
    :param ffn_output_parts: names inside ``ffn_output`` of the modules whose outputs it sums
        (Qwen2-MoE: the routed ``experts`` and the gated ``shared_expert.down_proj``), into each of
        which a map on its output is folded; a part a block lacks is passed over (a dense layer's
        ``down_proj`` beside the expert layers'). Empty when ``ffn_output`` is itself the one to fold into.
    :param ffn_output_norm: name inside a block of a norm applied to that output before the
        residual add (Gemma's ``post_feedforward_layernorm``); empty when there is none A norm the config
        switches off (an ``nn.Identity`` in its place, HyperCLOVA X without ``use_post_norm``) counts as none.
    :param attention_output: name inside a block of the linear layer whose output the attention adds
        to the stream (``self_attn.o_proj``; GPT-2 ``attn.c_proj``): healing refits it in the block
        after each cut. Empty where the attention output is not added on its own (parallel
        attention and FFN, post-norm blocks). Hybrid families whose blocks mix attention kinds name
        alternatives separated by ``|`` (Qwen3.5: ``self_attn.o_proj|linear_attn.out_proj``); each
        block uses the first it has.
    :param attention_output_norm: name inside a block of a norm applied to the attention output
        before the residual add (Gemma's ``post_attention_layernorm``); empty when there is none.
    :param parallel_fields: config fields any of which, when true, makes a block parallel (attention
        and FFN read the same input, StableLM's ``use_parallel_residual``): the attention output is
        then not added on its own and is not refitted.
    :param layer_index_fields: config fields listing layer *indices* (Qwen3-MoE's
        ``mlp_only_layers``), renumbered to the kept blocks on removal.
    :param period_fields: config fields that give layers their kind by a period (Qwen3-MoE's
        ``decoder_sparse_step``: every k-th layer sparse); removal, which would change the kept
        layers' kinds, is refused unless they are 1.
    :param prefix_count_fields: config fields counting the first blocks, which are of another kind
        (DeepSeek-V3's and GLM-4.5's ``first_k_dense_replace``: the first k blocks dense, the rest
        experts), recounted over the kept blocks on removal.
    :param last_index_fields: config fields holding the index of the last block of a kind
        (ERNIE-4.5-MoE's ``moe_layer_end_index``: experts up to there), moved to the last kept block
        at or before it on removal.
    :param run_length_fields: config fields giving one value per layer as runs ``[[pattern, repeats], …]``,
        the pattern's values repeated ``repeats`` times (GPT-Neo's ``attention_types``, e.g.
        ``[[["global", "local"], 12]]``), re-encoded on removal as runs of the kept blocks' values.
    :param residual_scale: config field by which every block multiplies its attention and FFN
        outputs before adding them to the stream (Granite's ``residual_multiplier``); empty for 1.
    :param depth_scale: config field that, divided by √(number of blocks), is that factor (MiniCPM3's
        ``scale_depth``); on removal it is multiplied by √(kept / before), so that the kept blocks
        add what they added before — the reloaded model would otherwise scale every update anew.
    """

    blocks: tuple[str, ...]
    config: str = ""
    per_layer_fields: tuple[str, ...] = ("layer_types",)
    ffn: tuple[str, ...] = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    ffn_size_field: str = "intermediate_size"
    ffn_size_settings: tuple[tuple[str, object], ...] = ()
    ffn_note: str = ""
    ffn_output: str = "mlp.down_proj"
    ffn_output_parts: tuple[str, ...] = ()
    ffn_output_norm: str = ""
    attention_output: str = "self_attn.o_proj"
    attention_output_norm: str = ""
    parallel_fields: tuple[str, ...] = ()
    residual_scale: str = ""
    depth_scale: str = ""
    layer_index_fields: tuple[str, ...] = ()
    period_fields: tuple[str, ...] = ()
    prefix_count_fields: tuple[str, ...] = ()
    last_index_fields: tuple[str, ...] = ()
    run_length_fields: tuple[str, ...] = ()
