"""Initial weights that do not depend on the parallel layout.

megatron-core initialises each tensor-parallel shard from its rank's RNG stream and each
pipeline stage from wherever that stage's stream happens to be, so the same seed gives
different models at TP=1, TP=2 or PP=2. Users comparing layouts (and our parity tests)
want one model per seed. Here every parameter is drawn from its own generator, seeded by
the run's seed and the parameter's *global* name (global layer number, unsharded shape),
as a full tensor; each rank keeps its shard. The distributions are megatron-core's:
N(0, init_method_std) for weights, N(0, init_method_std / sqrt(2 x num_layers)) for the
output projections of attention and MLP, ones for norm weights (zeros, i.e. gamma = 1, when
they are stored zero-centred: ``--apply-layernorm-1p``), zeros for biases.

Megatron-LM does not do this; it costs one full-size draw per parameter (on the GPU on
CUDA runs), a few seconds at 1B parameters.
"""

from __future__ import annotations

import math
import re
import zlib

import torch

from megatron_ixt.runtime.distributed import ParallelLayout

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
_OUTPUT_PROJECTIONS = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")


def _generator(seed: int, name: str, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))


def _normal(shape, std: float, seed: int, name: str, device) -> torch.Tensor:
    out = torch.empty(shape, dtype=torch.float32, device=device)
    return out.normal_(0.0, std, generator=_generator(seed, name, device))


def global_parameter_name(model, name: str) -> str:
    """``decoder.layers.<local index>.x`` -> ``decoder.layers.<global index>.x``; the output
    layer of a tied model is the word embedding."""
    match = _LAYER.match(name)
    if match:
        layer = model.decoder.layers[int(match.group(1))]
        return f"decoder.layers.{layer.layer_number - 1}." + name[match.end():]
    if name == "output_layer.weight" and model.share_embeddings_and_output_weights:
        return "embedding.word_embeddings.weight"
    return name


def _full_and_slice(param: torch.Tensor, name: str, std: float, seed: int, vocab_size: int, gated: bool,
                    layout: ParallelLayout):
    """This rank's shard of the parameter's full tensor (megatron-core tags sharded
    parameters with ``tensor_model_parallel`` and ``partition_dim``)."""
    sharded = getattr(param, "tensor_model_parallel", False)
    tp = layout.tp if sharded else 1
    rank = layout.tp_rank if sharded else 0
    device = param.device
    dim = param.partition_dim if sharded else 0
    full_shape = list(param.shape)
    full_shape[dim] *= tp
    if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        full = _vocab_rows(full_shape[0], full_shape[1:], std, seed, name, vocab_size, device)
    elif gated and name.endswith("mlp.linear_fc1.weight"):
        # A rank's SwiGLU fc1 shard is [its gate rows; its up rows]: the gate and up
        # projections are sharded separately (as megatron-core's checkpoints store them).
        half = full_shape[0] // 2
        gate = _normal([half, *full_shape[1:]], std, seed, name + "/gate", device)
        up = _normal([half, *full_shape[1:]], std, seed, name + "/up", device)
        return torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]])
    else:
        full = _normal(full_shape, std, seed, name, device)
    return full.chunk(tp, dim=dim)[rank]


def _vocab_rows(padded: int, rest, std, seed, name, vocab_size, device) -> torch.Tensor:
    """Rows of the real vocabulary come from one draw whatever the padding (which depends on
    TP); the padding rows from another."""
    real = _normal([min(vocab_size, padded), *rest], std, seed, name, device)
    if padded <= vocab_size:
        return real
    return torch.cat([real, _normal([padded - vocab_size, *rest], std, seed, name + "/padding", device)])


@torch.no_grad()
def initialize_weights(chunks, seed: int, vocab_size: int, layout: ParallelLayout) -> None:
    """Overwrite every parameter of the model chunks with its layout-independent value
    (``layout``: which TP shard this rank keeps)."""
    for model in chunks:
        config = model.config
        std = config.init_method_std
        for local_name, param in model.named_parameters():
            name = global_parameter_name(model, local_name)
            leaf = name.rsplit(".", 1)[-1]
            if "norm" in name and leaf in ("weight", "layer_norm_weight"):
                gamma_minus_one = config.layernorm_zero_centered_gamma
                value = (torch.zeros_like if gamma_minus_one else torch.ones_like)(param, dtype=torch.float32)
            elif leaf.endswith("bias"):
                value = torch.zeros_like(param, dtype=torch.float32)
            elif param.dim() >= 2:
                scale = std / math.sqrt(2.0 * config.num_layers) if name.endswith(_OUTPUT_PROJECTIONS) else std
                value = _full_and_slice(param, name, scale, seed, vocab_size, config.gated_linear_unit, layout)
            else:
                raise ValueError(f"no layout-independent initialisation rule for parameter {local_name} "
                                 f"{tuple(param.shape)}; add one in megatron_ixt/model/init.py")
            param.copy_(value)
            # --fp8-param-gather: a Transformer Engine FP8 weight keeps the value it was created
            # with in high precision, and the distributed optimizer builds its fp32 master copy
            # from that (megatron-core's distrib_optimizer), not from the FP8 data: set both.
            high_precision = getattr(param, "get_high_precision_init_val", lambda: None)()
            if high_precision is not None:
                high_precision.copy_(value)
