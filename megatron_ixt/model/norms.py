"""PyTorch normalization layers for megatron-core's local (non-Transformer-Engine) spec.

megatron-core's ``WrappedTorchNorm`` refuses sequence parallelism: with it the norm
weights see only this rank's slice of the sequence, and their gradients must be summed
over the tensor-parallel group. megatron-core's ``finalize_model_grads`` already does that
for every parameter tagged ``sequence_parallel=True`` (Transformer Engine and apex norms
tag themselves); these layers tag themselves the same way, which is all that is missing.

Zero-centred gamma (``--apply-layernorm-1p``, megatron-core's ``layernorm_zero_centered_gamma``,
which its ``WrappedTorchNorm`` refuses): the weight stores gamma - 1 and the norm computes with
weight + 1, as Transformer Engine's and apex's norms do under that flag: a weight near 0 keeps
more precision in 16 bits than one near 1 (Megatron-LM: "improves numerical stability"). Initialised to zeros (``model/init.py``); export adds the 1 back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer import TransformerConfig


def _tag_sequence_parallel(module: torch.nn.Module, config: TransformerConfig) -> torch.nn.Module:
    for param in module.parameters():
        setattr(param, "sequence_parallel", config.sequence_parallel)
    return module


class ZeroCenteredLayerNorm(torch.nn.LayerNorm):
    """``torch.nn.LayerNorm`` whose weight holds gamma - 1."""

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.elementwise_affine:
            torch.nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight + 1, self.bias, self.eps)


class ZeroCenteredRMSNorm(torch.nn.RMSNorm):
    """``torch.nn.RMSNorm`` whose weight holds gamma - 1."""

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.elementwise_affine:
            torch.nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight + 1, self.eps)


class TorchNorm:
    """Builds ``torch.nn.LayerNorm`` or ``torch.nn.RMSNorm`` (per ``config.normalization``),
    or their zero-centred-gamma forms under ``config.layernorm_zero_centered_gamma``, with the
    signature megatron-core's layer specs use for norm modules."""

    def __new__(
        cls,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str = "LayerNorm",
    ):
        zero_centered = config.layernorm_zero_centered_gamma or zero_centered_gamma
        if config.normalization == "LayerNorm":
            norm = (ZeroCenteredLayerNorm if zero_centered else torch.nn.LayerNorm)(hidden_size, eps=eps)
        elif config.normalization == "RMSNorm":
            norm = (ZeroCenteredRMSNorm if zero_centered else torch.nn.RMSNorm)(hidden_size, eps=eps)
        else:
            raise ValueError(f"unsupported normalization {config.normalization!r}")
        return _tag_sequence_parallel(norm, config)
