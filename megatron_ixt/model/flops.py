"""Model FLOPs per iteration (Megatron's accounting) and device peak throughput for MFU."""

from __future__ import annotations

from typing import Optional

import torch

from megatron_ixt.config.schema import Config

# Dense peak TFLOP/s (no sparsity) by device-name substring: (bf16/fp16, fp8).
_PEAK_TFLOPS = {
    "H200": (989.0, 1979.0),
    "H100": (989.0, 1979.0),
    "A100": (312.0, None),
    "L40S": (362.0, 733.0),
    "A10G": (70.0, None),
}


def training_flops_per_iteration(cfg: Config, padded_vocab: int) -> float:
    """3 (forward + 2x backward) x 2 (multiply-add) x matmul MACs per token, summed over
    the global batch:

    per layer: h*(q + 2kv) QKV + s/2*q*2 causal attention (scores and values) + q*h output
    projection + h*ffn*(3 if SwiGLU else 2) MLP; plus h*V for the logits.
    """
    m = cfg.model
    h, s, L = m.hidden_size, m.seq_length, m.num_layers
    heads = m.num_attention_heads
    kv_channels = m.kv_channels or h // heads
    groups = m.num_query_groups if m.group_query_attention and m.num_query_groups else heads
    q = heads * kv_channels
    kv = groups * kv_channels
    ffn = m.ffn_hidden_size or 4 * h
    per_layer = h * (q + 2 * kv) + (s / 2) * q * 2 + q * h + h * ffn * (3 if m.swiglu else 2)
    per_token = L * per_layer + h * padded_vocab
    tokens = cfg.training.global_batch_size * s
    return 3 * 2 * per_token * tokens


def device_peak_tflops(cfg: Config) -> Optional[float]:
    """Peak dense TFLOP/s of this GPU at the training precision; None on CPU or unknown GPUs
    (MFU is then not reported rather than guessed)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, (bf16, fp8) in _PEAK_TFLOPS.items():
        if key in name:
            if cfg.model.fp8_format and fp8:
                return fp8
            return bf16 if cfg.model.bf16 else bf16 / 2  # TF32-ish fp32 peak is about half
    return None
