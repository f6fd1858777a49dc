"""Model FLOPs per iteration (Megatron's accounting) and device peak throughput for MFU."""

from __future__ import annotations

import logging
from typing import Optional

import torch

from megatron_ixt.config.schema import Config

logger = logging.getLogger(__name__)

# Dense peak TFLOP/s (no sparsity) by the exact name torch.cuda.get_device_name() reports:
# (bf16/fp16, fp8). PCIe and NVL parts run at lower clocks and power than SXM ones, so a
# substring match ("H100") would overstate their peak and understate MFU.
PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": (989.0, 1979.0),   # SXM5
    "NVIDIA H100 PCIe": (756.0, 1513.0),
    "NVIDIA H100 NVL": (835.0, 1671.0),
    "NVIDIA H200": (989.0, 1979.0),             # SXM
    "NVIDIA H200 NVL": (835.0, 1671.0),
    "NVIDIA GH200 480GB": (989.0, 1979.0),
    "NVIDIA A100-SXM4-80GB": (312.0, None),
    "NVIDIA A100-SXM4-40GB": (312.0, None),
    "NVIDIA A100-PCIE-40GB": (312.0, None),
    "NVIDIA A100 80GB PCIe": (312.0, None),
    "NVIDIA L40S": (362.0, 733.0),
    "NVIDIA A10G": (70.0, None),
    "NVIDIA B200": (2250.0, 4500.0),
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


def device_peak_tflops(cfg: Config, device_name: Optional[str] = None) -> Optional[float]:
    """Peak dense TFLOP/s of this GPU at the training precision; None on CPU or unknown GPUs
    (MFU is then not reported rather than guessed)."""
    if device_name is None:
        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name()
    if device_name not in PEAK_TFLOPS:
        logger.info("no peak throughput known for %r: MFU is not reported", device_name)
        return None
    bf16, fp8 = PEAK_TFLOPS[device_name]
    if cfg.model.fp8_format and fp8:
        return fp8
    return bf16 if cfg.model.bf16 or cfg.model.fp16 else bf16 / 2  # FP16 = BF16 peak; TF32: half
