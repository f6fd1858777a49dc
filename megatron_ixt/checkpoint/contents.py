"""What a checkpoint holds, for the one that writes it (``save``), the one that reads it
(``load``) and the importer that writes a weights-only one (``conversion.import_hf``).

A checkpoint is megatron-core's ``dist_checkpointing`` (``torch_dist``) state dict:

* ``model`` (``model0``, ``model1``, ... per virtual pipeline stage, as Megatron-LM writes
  them): each chunk's ``sharded_state_dict``, resharded to any layout at load;
* ``optimizer``: megatron-core's distributed-optimizer or per-parameter state;
* ``rng_state``: every rank's RNG states, one sharded object indexed by (pp, tp, dp) rank;
* common, non-sharded entries (``common.pt``): ``iteration``, ``train_state`` (counters),
  ``opt_param_scheduler``, ``config`` (the whole configuration tree), ``layout`` (the one
  it was saved at), ``padded_vocab_size`` and ``vocab_size``, ``ixt_prefix`` (the training
  data's prefix template and thresholds), ``checkpoint_version``; an imported one also
  ``weights_only`` and ``converted_from``.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from megatron.core import tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_ixt.runtime.distributed import ParallelLayout

CHECKPOINT_VERSION = 1
"""This project's checkpoint format version (``common.pt``'s ``checkpoint_version``)."""


def rng_state(layout: ParallelLayout) -> ShardedObject:
    """Every rank's RNG states, as one sharded object indexed by (pp, tp, dp) rank."""
    state = {
        "random": random.getstate(),
        "np_random": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    shape, offset = layout.rank_grid()
    return ShardedObject("rng_state", state, shape, offset, replica_id=0)


def restore_rng(state: dict) -> None:
    """The inverse of :func:`rng_state`, for this rank."""
    random.setstate(state["random"])
    np.random.set_state(state["np_random"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def unwrap(chunk):
    """The GPTModel inside its wrappers (DDP, then Float16Module under BF16; inference tools
    may hold bare models)."""
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


def model_keys(model) -> list[str]:
    """Keys as Megatron-LM writes them: ``model``, or ``model0``, ``model1``... per virtual stage."""
    return ["model"] if len(model) == 1 else [f"model{i}" for i in range(len(model))]


def model_sharded_state_dict(model) -> dict:
    return {key: unwrap(chunk).sharded_state_dict() for key, chunk in zip(model_keys(model), model)}


def padded_vocab(model) -> int:
    return unwrap(model[0]).vocab_size
