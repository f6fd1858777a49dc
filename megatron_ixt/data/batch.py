"""The micro-batch contract between the data pipeline and the training step.

A dataset sample is megatron-core's dict of tensors (``GPTDataset.__getitem__``); the
loader (``data/loader.py``) turns each micro-batch into a :class:`Batch` with the fields the
consuming pipeline stage needs and nothing else. Every field is ``[micro_batch_size,
seq_length]``: int64 for :data:`INTEGER_FIELDS`, float32 for the masks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields as dataclass_fields
from typing import Optional

import torch

GPT_FIELDS = ("tokens", "position_ids", "labels", "loss_mask")
"""What megatron-core's GPTDataset (and Megatron-LM-preprocessed data) provides."""

IXT_FIELDS = GPT_FIELDS + ("prefix_mask", "text_mask", "orphan_mask", "token_level")
"""What the IXT dataset adds: which label tokens are feedback prefix, which are document
text, which text lost its prefix to packing, and each token's document quality level."""

INPUT_FIELDS = ("tokens", "position_ids")
"""What the first pipeline stage reads (the embedding's input)."""

INTEGER_FIELDS = frozenset({"tokens", "position_ids", "labels", "token_level"})
"""int64 fields; the others are float32 masks."""


def boundary_field(sft: bool) -> str:
    """The field that marks a batch's document boundaries, which every pipeline stage's
    attention needs under document masks: the EOD ``tokens`` (pretraining), or the
    ``position_ids``, restarting at each conversation (SFT: a chat template may use the EOD
    inside a conversation)."""
    return "position_ids" if sft else "tokens"


@dataclass
class Batch:
    """One micro-batch. A field this pipeline stage does not need is ``None``."""

    tokens: Optional[torch.Tensor] = None
    position_ids: Optional[torch.Tensor] = None
    labels: Optional[torch.Tensor] = None
    loss_mask: Optional[torch.Tensor] = None
    prefix_mask: Optional[torch.Tensor] = None
    text_mask: Optional[torch.Tensor] = None
    orphan_mask: Optional[torch.Tensor] = None
    token_level: Optional[torch.Tensor] = None

    def present(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclass_fields(self) if getattr(self, f.name) is not None)

    def on_this_context_parallel_rank(self) -> "Batch":
        """This CP rank's share of every sequence: megatron-core's load-balanced split into
        2 x CP chunks, of which this rank keeps chunks ``r`` and ``2 CP - 1 - r`` (causal
        attention costs more at the end of a sequence)."""
        from megatron.core.utils import get_batch_on_this_cp_rank

        return Batch(**get_batch_on_this_cp_rank({n: getattr(self, n) for n in self.present()}))

    def to(self, device: torch.device, non_blocking: bool = True) -> "Batch":
        return Batch(**{n: getattr(self, n).to(device, non_blocking=non_blocking) for n in self.present()})


def dataset_fields(dataset) -> tuple[str, ...]:
    """The fields a dataset's samples carry: IXT datasets declare theirs (``BATCH_FIELDS``);
    megatron-core's GPT datasets carry :data:`GPT_FIELDS`. A blend has its parts' fields."""
    part = getattr(dataset, "datasets", [dataset])[0]  # megatron-core's BlendedDataset
    return getattr(part, "BATCH_FIELDS", GPT_FIELDS)
