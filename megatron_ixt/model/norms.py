"""PyTorch normalization layers for megatron-core's local (non-Transformer-Engine) spec.

megatron-core's ``WrappedTorchNorm`` refuses sequence parallelism: with it the norm
weights see only this rank's slice of the sequence, and their gradients must be summed
over the tensor-parallel group. megatron-core's ``finalize_model_grads`` already does that
for every parameter tagged ``sequence_parallel=True`` (Transformer Engine and apex norms
tag themselves); these layers tag themselves the same way, which is all that is missing.
"""

from __future__ import annotations

import torch
from megatron.core.transformer import TransformerConfig


def _tag_sequence_parallel(module: torch.nn.Module, config: TransformerConfig) -> torch.nn.Module:
    for param in module.parameters():
        setattr(param, "sequence_parallel", config.sequence_parallel)
    return module


class TorchNorm:
    """Builds ``torch.nn.LayerNorm`` or ``torch.nn.RMSNorm`` (per ``config.normalization``)
    with the signature megatron-core's layer specs use for norm modules."""

    def __new__(
        cls,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str = "LayerNorm",
    ):
        if config.layernorm_zero_centered_gamma or zero_centered_gamma:
            raise ValueError("zero-centered gamma needs Transformer Engine or apex norms")
        if config.normalization == "LayerNorm":
            norm = torch.nn.LayerNorm(hidden_size, eps=eps)
        elif config.normalization == "RMSNorm":
            norm = torch.nn.RMSNorm(hidden_size, eps=eps)
        else:
            raise ValueError(f"unsupported normalization {config.normalization!r}")
        return _tag_sequence_parallel(norm, config)
