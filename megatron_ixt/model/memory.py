"""Theoretical memory per GPU of a training job, as Megatron-LM computes it.

Megatron-LM's ``megatron/training/theoretical_memory_usage.py`` (core_v0.16.1) prints, for the
most loaded rank, the weights + gradients + optimizer states and the activations of
Korthikanti et al. 2022 (arXiv 2205.05198, Table 2), always assuming *selective*
recomputation. This module computes the same figures from this project's configuration (the
same formulas: dense layers, biases not counted, 16-bit activations, the attention's query
size taken as the hidden size) and extends the activations to the two other settings a user
chooses between:

- no recomputation: the selective figure, plus, where the attention kernel materialises the
  scores (megatron-core's unfused attention), the ``5 a s^2 b`` bytes per layer selective
  recomputation would recompute (softmax output, its dropout mask and output), split by TP.
  Flash and fused kernels never store them: there the two figures are the same;
- full recomputation (``--recompute-method uniform|block``, ``--recompute-num-layers N``):
  only each checkpointed group's input is kept (``2 s b h`` bytes, split by TP under sequence
  parallelism), plus the working set of the one group being recomputed.

Context parallelism divides the sequence of each rank (Megatron-LM's formula predates it).
Weights: 2 bytes (16-bit) + 4 (fp32 gradient; 2 with ``--grad-reduce-in-bf16``) + 12 (fp32
master copy and Adam's two moments) = 18 bytes a parameter, the optimizer's 12 (fp32 training:
8, no master copy) split over data-parallel ranks by ``--use-distributed-optimizer``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    parameters: float  # on the most loaded rank
    bytes_per_parameter: float
    weights_and_optimizer: float  # bytes
    activations: dict  # "none" | "selective" | "full" -> bytes
    recompute: str  # the job's own setting

    @property
    def total(self) -> float:
        return self.weights_and_optimizer + self.activations[self.recompute]

    def report(self) -> str:
        full = self.activations["full"]
        lines = [
            "theoretical memory per GPU (most loaded rank; Megatron-LM's theoretical_memory_usage.py, extended):",
            f"  weights + gradients + optimizer states: {self.weights_and_optimizer / GIB:8.2f} GiB "
            f"({self.parameters / 1e9:.3f} B parameters x {self.bytes_per_parameter:.2f} bytes)",
            f"  activations, no recomputation:          {self.activations['none'] / GIB:8.2f} GiB",
            f"  activations, selective recomputation:   {self.activations['selective'] / GIB:8.2f} GiB "
            "(Megatron-LM's figure)",
            f"  activations, full recomputation:        {full / GIB:8.2f} GiB",
            f"  total with this job's setting ({self.recompute}): {self.total / GIB:8.2f} GiB",
        ]
        return "\n".join(lines)


def parameters_on_most_loaded_rank(cfg, padded_vocab: int) -> float:
    """Megatron-LM's ``compute_weight_and_optimizer_memory`` parameter count (dense layers)."""
    m, p = cfg.model, cfg.parallel
    h, heads = m.hidden_size, m.num_attention_heads
    kv_channels = m.kv_channels or h // heads
    groups = m.num_query_groups if m.group_query_attention and m.num_query_groups else heads
    ffn = m.ffn_hidden_size or 4 * h
    gated = 3 / 2 if m.swiglu else 1
    norm = 1 if m.normalization == "RMSNorm" else 2
    attention = 2 * h * h * ((1 + groups / heads) * (kv_channels * heads / h))
    layer = 2 * h * (ffn * gated + norm) + attention
    embedding = h * padded_vocab
    block = layer * m.num_layers + norm * h
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    most_loaded = (block / pp + embedding) / tp
    if m.untie_embeddings_and_output_weights and pp == 1:
        most_loaded += embedding / tp
    return most_loaded


def bytes_per_parameter(cfg, data_parallel_size: int) -> float:
    mixed = cfg.model.bf16 or cfg.model.fp16
    weight = 2 if mixed else 4
    grad = 2 if cfg.optimizer.grad_reduce_in_bf16 else 4
    states = (4 if mixed else 0) + (8 if cfg.optimizer.optimizer == "adam" else 4)
    if cfg.optimizer.use_distributed_optimizer:
        return weight + grad + states / data_parallel_size
    return weight + grad + states


def _layer_bytes(cfg, s: int, b: int, recompute: str, scores_stored: bool) -> float:
    """One layer's activations (Table 2 of Korthikanti et al.), as Megatron-LM writes them:
    with sequence parallelism ``s b h (18 + 4 ffn/h)`` for the whole TP group (the caller
    divides the total by TP once, as Megatron-LM does), without it ``s b h (10 + 24 / t)`` on
    one rank; no recomputation adds the attention scores, ``5 a s^2 b`` (split by TP)."""
    m, p = cfg.model, cfg.parallel
    h, t = m.hidden_size, p.tensor_model_parallel_size
    ffn = m.ffn_hidden_size or 4 * h
    sp = p.sequence_parallel
    selective = s * b * h * (18 + 4 * ffn / h) if sp else s * b * h * (10 + 24 / t)
    if recompute == "selective" or not scores_stored:
        return selective
    return selective + 5 * m.num_attention_heads * s * s * b / (1 if sp else t)


def activation_bytes(cfg, recompute: str, num_microbatches: Optional[int], padded_vocab: int,
                     scores_stored: bool = False) -> float:
    """Activations of the first pipeline stage (the most loaded), Megatron-LM's
    ``compute_activation_memory`` (with sequence parallelism) or ``..._without_sp``, for
    ``recompute`` in none | selective | full."""
    m, p = cfg.model, cfg.parallel
    s = m.seq_length // p.context_parallel_size
    b, h, t = cfg.training.micro_batch_size, m.hidden_size, p.tensor_model_parallel_size
    pp, L = p.pipeline_model_parallel_size, m.num_layers
    vpp = (L // pp // p.num_layers_per_virtual_pipeline_stage) if p.num_layers_per_virtual_pipeline_stage else None
    sp = p.sequence_parallel
    # Megatron-LM counts the first stage as pp micro-batches in flight of L / pp layers: L layers.
    working_set = 0.0
    if recompute == "full":
        full_layer = _layer_bytes(cfg, s, b, "none", scores_stored)
        checkpoint = 2 * s * b * h  # a checkpointed group's input (split by TP under sequence parallelism)
        n = m.recompute_num_layers or 1
        if (m.recompute_method or "uniform") == "uniform":
            layers = math.ceil(L / n) * checkpoint
            working_set = n * full_layer
        else:  # block: the first n layers of each stage checkpointed one by one
            n = min(n, L // pp)
            layers = pp * n * checkpoint + (L - pp * n) * full_layer
            working_set = full_layer
    else:
        layers = L * _layer_bytes(cfg, s, b, recompute, scores_stored)
    # Inputs to the embedding and its dropout, pp micro-batches in flight.
    layers += 8 * s * b * pp + s * b * h * pp
    if vpp is not None:
        layers *= 1 + (pp - 1) / (pp * vpp)
    elif pp > 1 and num_microbatches is not None:
        layers *= min(1, num_microbatches / pp)
    vocab = padded_vocab
    if sp:
        total = layers
        if pp == 1:
            total += s * b * h * 4 * (1 + vocab / h)
        return (total + working_set) / t
    total = layers
    if pp == 1:
        total += (s * b * vocab / t + s * b * h) * 2
    return total * 1.05 + working_set  # Megatron-LM's 5 % for temporaries (without sequence parallelism)


def estimate(cfg, world_size: int, padded_vocab: int, scores_stored: bool = False) -> MemoryEstimate:
    """The job's theoretical memory per GPU: weights, gradients and optimizer states of the most
    loaded rank, and its activations without, with selective and with full recomputation.
    ``scores_stored``: the attention kernel keeps the ``[b, a, s, s]`` scores (unfused)."""
    p, t = cfg.parallel, cfg.training
    dp = world_size // (p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size)
    params = parameters_on_most_loaded_rank(cfg, padded_vocab)
    per_param = bytes_per_parameter(cfg, dp)
    num_microbatches = t.global_batch_size // (t.micro_batch_size * dp) if t.global_batch_size else None
    activations = {r: activation_bytes(cfg, r, num_microbatches, padded_vocab, scores_stored)
                   for r in ("none", "selective", "full")}
    return MemoryEstimate(params, per_param, params * per_param, activations,
                          cfg.model.recompute_granularity or "none")
