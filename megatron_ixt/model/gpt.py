"""Build megatron-core's ``GPTModel`` from the configuration.

Returns one model chunk per virtual pipeline stage held by this rank (one chunk without
interleaving), as megatron-core's schedules expect.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import ModuleSpec, TransformerConfig
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnBackend, AttnMaskType
from megatron.core.transformer.module import Float16Module
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

from megatron_ixt.config.schema import Config
from megatron_ixt.model.attention import SelfAttention, TorchCoreAttention
from megatron_ixt.model.init import initialize_weights
from megatron_ixt.model.norms import TorchNorm
from megatron_ixt.runtime.distributed import ParallelLayout, virtual_pipeline_size
from megatron_ixt.runtime.kernels import KernelPlan

logger = logging.getLogger(__name__)


def padded_vocab_size(vocab_size: int, cfg: Config) -> int:
    """Megatron-LM pads the vocabulary so that each TP shard of the embedding is a
    multiple of ``make_vocab_size_divisible_by`` (keeps GEMMs aligned)."""
    return cfg.tokenizer.padded_vocab_size(vocab_size, cfg.parallel.tensor_model_parallel_size)


def params_dtype(m) -> torch.dtype:
    """The dtype of the model's weights and activations under ``--bf16`` / ``--fp16`` (``ModelConfig``)."""
    return torch.bfloat16 if m.bf16 else torch.float16 if m.fp16 else torch.float32


def transformer_config(cfg: Config, plan: KernelPlan) -> TransformerConfig:
    """megatron-core's TransformerConfig: the model shape from ``cfg``, every kernel choice
    (fusions, attention backend) from the run's kernel plan."""
    m, p = cfg.model, cfg.parallel
    dtype = params_dtype(m)
    vpp = virtual_pipeline_size(cfg)
    kwargs = dict(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups if m.group_query_attention else None,
        kv_channels=m.kv_channels,
        hidden_dropout=m.hidden_dropout,
        recompute_granularity=m.recompute_granularity,
        recompute_method=m.recompute_method,
        recompute_num_layers=m.recompute_num_layers,
        attention_dropout=m.attention_dropout,
        init_method_std=m.init_method_std,
        normalization=m.normalization,
        layernorm_epsilon=m.norm_epsilon,
        # --apply-layernorm-1p; the local spec's norms (model/norms.py) honour it too.
        layernorm_zero_centered_gamma=m.apply_layernorm_1p,
        gated_linear_unit=m.swiglu,
        activation_func=F.silu if m.swiglu else F.gelu,
        add_bias_linear=not m.disable_bias_linear,
        add_qkv_bias=m.add_qkv_bias,
        qk_layernorm=m.qk_layernorm,
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=vpp,
        sequence_parallel=p.sequence_parallel,
        context_parallel_size=p.context_parallel_size,
        # Megatron-LM's defaults: the interleaved schedule overlaps its point-to-point
        # transfers, which needs unbatched sends/receives. Batched ones would also be wrong
        # on gloo with PP=2: both directions of the virtual ring then share one peer and one
        # channel, and a forward activation can be matched with a backward gradient.
        overlap_p2p_comm=vpp is not None,
        batch_p2p_comm=vpp is None,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=m.bf16,
        fp16=m.fp16,
        # megatron-core's initialisation also tags tensor-parallel parameters (partition_dim,
        # ...), which the grad norm and checkpoints need; megatron_ixt.model.init then
        # overwrites every weight with its layout-independent value.
        use_cpu_initialization=plan.device == "cpu",
        # Per-token loss (the default here): the schedule sums (loss * mask) and token counts
        # over micro-batches and data-parallel ranks, so every layout computes exactly the same
        # mean. Off (Megatron-LM's default), each micro-batch's sum is divided by its own token
        # count and by the number of micro-batches, and DDP averages over data-parallel ranks.
        calculate_per_token_loss=cfg.training.calculate_per_token_loss,
        masked_softmax_fusion=plan.masked_softmax_fusion,
        bias_activation_fusion=plan.bias_activation_fusion,
        bias_dropout_fusion=plan.bias_dropout_fusion,
        apply_rope_fusion=plan.apply_rope_fusion,
        cross_entropy_loss_fusion=plan.cross_entropy_loss_fusion,
        cross_entropy_fusion_impl=m.cross_entropy_fusion_impl,
        gradient_accumulation_fusion=plan.gradient_accumulation_fusion,
        deallocate_pipeline_outputs=plan.deallocate_pipeline_outputs,
        # Selects Transformer Engine's kernel (megatron-core sets NVTE_*_ATTN from it); the
        # local spec's attention is chosen in _layer_spec.
        attention_backend=AttnBackend[plan.te_attention_backend or "auto"],
        deterministic_mode=cfg.training.deterministic_mode,
    )
    if m.fp8_format is not None:
        kwargs.update(fp8=m.fp8_format, fp8_recipe=m.fp8_recipe, fp8_margin=m.fp8_margin,
                      fp8_amax_history_len=m.fp8_amax_history_len, fp8_amax_compute_algo=m.fp8_amax_compute_algo,
                      # --fp8-param-gather: layers built under TE's fp8_model_init keep FP8 weights.
                      fp8_param=m.fp8_param_gather)
    return TransformerConfig(**kwargs)


def _core_attention(plan: KernelPlan, layer: ModuleSpec) -> ModuleSpec:
    """The layer spec with our ``SelfAttention`` (``model/attention.py``) and the plan's core
    attention: the torch attention (SDPA or
    FlexAttention), or megatron-core's own (Transformer Engine's, or the unfused one).
    The unfused one gets a ``padding`` mask type under document masks: with ``causal``,
    apex's fused softmax applies its own triangle and ignores the mask."""
    # Our SelfAttention: megatron-core's, with its static KV cache holding rotated keys.
    attention = dataclasses.replace(layer.submodules.self_attention, module=SelfAttention)
    core = None
    if plan.attention in ("sdpa", "flex"):
        core = ModuleSpec(module=TorchCoreAttention, params={"kernel": plan.attention})
    elif plan.attention == "unfused":
        core = DotProductAttention  # also inside Transformer Engine's layer spec
        if plan.document_masks == "dense":
            attention = dataclasses.replace(attention, params={**attention.params, "attn_mask_type": AttnMaskType.padding})
    if core is not None:
        attention = dataclasses.replace(attention, submodules=dataclasses.replace(attention.submodules, core_attention=core))
    return dataclasses.replace(layer, submodules=dataclasses.replace(layer.submodules, self_attention=attention))


def _layer_spec(cfg: Config, plan: KernelPlan, config: TransformerConfig, vp_stage: Optional[int]):
    """The decoder block spec. Transformer Engine's spec fuses norms into its linears; the
    local spec is pure PyTorch, with sequence-parallel-aware norms (``model/norms.py``)."""
    if plan.transformer_impl == "transformer_engine":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return _core_attention(plan, get_gpt_layer_with_transformer_engine_spec(qk_layernorm=cfg.model.qk_layernorm))
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    layer = get_gpt_layer_local_spec(normalization=cfg.model.normalization, qk_layernorm=cfg.model.qk_layernorm)
    layer = dataclasses.replace(
        layer, submodules=dataclasses.replace(layer.submodules, input_layernorm=TorchNorm, pre_mlp_layernorm=TorchNorm)
    )
    if cfg.model.qk_layernorm:  # per-head norms of queries and keys (Qwen3): the same torch norms
        attention = layer.submodules.self_attention
        norms = dataclasses.replace(attention.submodules, q_layernorm=TorchNorm, k_layernorm=TorchNorm)
        layer = dataclasses.replace(layer, submodules=dataclasses.replace(
            layer.submodules, self_attention=dataclasses.replace(attention, submodules=norms)))
    layer = _core_attention(plan, layer)
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer] * num_layers, layer_norm=TorchNorm)


def build_model_chunks(cfg: Config, layout: ParallelLayout, plan: KernelPlan, vocab_size: int,
                       initialize: bool = True) -> list:
    """One ``GPTModel`` per virtual pipeline stage on this rank (``layout``), with the kernels
    of the run's ``plan``, on the current device, with layout-independent initial weights;
    under BF16 or FP16 wrapped in megatron-core's ``Float16Module``, as Megatron-LM's ``get_model``
    does (every parameter, norms included, in BF16/FP16; the last stage's output back in fp32).

    ``initialize=False`` (weights about to be loaded: inference, conversion): zeros instead,
    without megatron-core's initialisation either, whose full-size master weights made
    building a model take about twice its size in memory."""
    config = transformer_config(cfg, plan)
    if not initialize:
        config.perform_initialization = False
    vpp = config.virtual_pipeline_model_parallel_size
    chunks = []
    for vp_stage in range(vpp or 1):
        stage = vp_stage if vpp else None
        model = GPTModel(
            config=config,
            transformer_layer_spec=_layer_spec(cfg, plan, config, stage),
            vocab_size=padded_vocab_size(vocab_size, cfg),
            max_sequence_length=cfg.model.max_position_embeddings or cfg.model.seq_length,
            pre_process=layout.is_first_stage(stage),
            post_process=layout.is_last_stage(stage),
            share_embeddings_and_output_weights=not cfg.model.untie_embeddings_and_output_weights,
            position_embedding_type=cfg.model.position_embedding_type,
            rotary_percent=cfg.model.rotary_percent,
            rotary_base=cfg.model.rotary_base,
            rope_scaling=cfg.model.use_rope_scaling,
            rope_scaling_factor=cfg.model.rope_scaling_factor,
            vp_stage=stage,
        )
        if plan.device == "cuda":
            model.cuda(torch.cuda.current_device())
        chunks.append(model)
    if initialize:
        initialize_weights(chunks, cfg.training.seed, vocab_size, layout)
    else:
        with torch.no_grad():
            for chunk in chunks:
                for param in chunk.parameters():
                    param.zero_()
    if cfg.model.bf16 or cfg.model.fp16:
        chunks = [Float16Module(config, chunk) for chunk in chunks]
    return chunks


def count_parameters(chunks) -> int:
    return sum(p.numel() for chunk in chunks for p in chunk.parameters())
