"""The SFT dataset: conversations preprocessed by ``tools/preprocess_data.py --sft``, packed
whole into samples, trained on their assistant tokens only.

Megatron-LM's ``SFTDataset`` (megatron/training/datasets/sft_dataset.py at core_v0.16.1)
reads JSONL at training time and packs the conversations of one line into a sample. This
one reads the indexed dataset and its roles file (``format/indexed_io.py``) by memory map
and differs where IXT needs it:

1. **Feedback dropout** (``--ixt-feedback-dropout``): per (conversation, epoch), with the
   pretraining dataset's splitmix64 draw (``packing.dropout_flags``), an annotated
   conversation trains without its feedback: the stored sequence holds both variants
   (``tokenizers/chat.py``), the dataset drops one kind of token.
2. **Packing across conversations**: samples are filled greedily with whole conversations in
   shuffled order (``packing.pack_whole``); a conversation never continues into the next
   sample, the rest of a sample is padding (no loss). One longer than a sample is cut to it
   (``tools/preprocess_data.py --overlong`` decides that earlier; the count is logged here).
3. **No attention across conversations**: position ids restart at each conversation (and at
   the padding), and the training step takes the document boundaries from them
   (``StepContext.boundaries``), not from EOD tokens: a chat template may end every turn with
   the EOD token itself (ChatML's ``<|im_end|>``).

Every rank builds the indices in memory (no cache files): packing 10^7 conversations takes
0.3 s, counting the roles of 4.2 billion tokens 3 s (numba, one pass over the memory map).

A sample carries the IXT fields: ``loss_mask`` (assistant tokens), ``prefix_mask`` (the
feedback tokens, never in the loss), ``text_mask`` (= the loss mask), ``orphan_mask`` (zeros)
and ``token_level`` (the conversation's quality level).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from megatron.core.datasets.gpt_dataset import GPTDatasetConfig, _build_document_index, _build_shuffle_index
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.megatron_dataset import MegatronDataset

from megatron_ixt.data import packing
from megatron_ixt.data.batch import IXT_FIELDS
from megatron_ixt.format.indexed_io import ROLES_FILE_SUFFIX, read_roles, read_side_file
from megatron_ixt.tokenizers.chat import FEEDBACK, LOSS, PLAIN, variant

logger = logging.getLogger(__name__)


@dataclass
class SFTDatasetConfig(GPTDatasetConfig):
    ixt_feedback_dropout: float = 0.0
    """Probability that an annotated conversation trains without its feedback, per (conversation, epoch)."""
    ixt_index_version: int = packing.VERSION
    """The index-building algorithm's version (``packing.VERSION``): part of the cache key."""


class SFTLowLevelDataset:
    """An ``IndexedDataset`` of conversations, its roles file and its side file."""

    def __init__(self, path_prefix: str, mmap: bool = True) -> None:
        self.indexed = IndexedDataset(path_prefix, multimodal=False, mmap=mmap)
        self.path_prefix = path_prefix
        self.sequence_lengths = self.indexed.sequence_lengths
        side = read_side_file(path_prefix)
        self.roles = read_roles(path_prefix)
        tokens = int(self.sequence_lengths.sum(dtype=np.int64))
        if side.shape[0] != len(self.indexed) or len(self.roles) != tokens:
            raise ValueError(f"{path_prefix}: {side.shape[0]} side rows and {len(self.roles)} roles for "
                             f"{len(self.indexed)} sequences of {tokens} tokens ({ROLES_FILE_SUFFIX} damaged?)")
        self.levels = np.ascontiguousarray(side[:, 1])
        self.starts = np.concatenate([[0], np.cumsum(self.sequence_lengths, dtype=np.int64)[:-1]])
        # Per sequence: tokens only the conditioned variant has, and only the unconditioned one.
        self.feedback_lengths = packing.count_role(self.roles, self.sequence_lengths, FEEDBACK)
        self.plain_lengths = packing.count_role(self.roles, self.sequence_lengths, PLAIN)

    def __len__(self) -> int:
        return len(self.indexed)

    def conversation(self, idx: int, conditioned: bool) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and roles of conversation ``idx``, with its feedback or without."""
        ids = self.indexed.get(idx)
        start = int(self.starts[idx])
        return variant(ids, np.asarray(self.roles[start:start + len(ids)]), conditioned)


class SFTDataset(MegatronDataset):
    """See the module docstring."""

    config: SFTDatasetConfig
    BATCH_FIELDS = IXT_FIELDS

    def __init__(self, dataset, dataset_path, indices, num_samples, index_split, config) -> None:
        super().__init__(dataset, dataset_path, indices, num_samples, index_split, config)
        self.document_index, self.sample_index, self.shuffle_index, self.conditioned = self._build_indices()

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: SFTDatasetConfig) -> SFTLowLevelDataset:
        return SFTLowLevelDataset(dataset_path, mmap=config.mmap_bin_files)

    @staticmethod
    def numel_low_level_dataset(low_level_dataset: SFTLowLevelDataset) -> int:
        return len(low_level_dataset)

    @staticmethod
    def _key_config_attributes() -> list[str]:
        return ["random_seed", "sequence_length", "split", "split_matrix", "ixt_feedback_dropout", "ixt_index_version"]

    def _occurrences(self, epochs: int, rng_seed: int):
        """Occurrence order over ``epochs`` shuffled epochs, each occurrence's variant, size."""
        d = self.dataset
        document_index = _build_document_index(self.indices, epochs, np.random.RandomState(rng_seed), False)
        dropped = packing.dropout_flags(document_index, d.feedback_lengths, rng_seed, self.config.ixt_feedback_dropout)
        conditioned = ~dropped
        sizes = d.sequence_lengths[document_index].astype(np.int64) - np.where(
            conditioned, d.plain_lengths[document_index], d.feedback_lengths[document_index])
        return document_index, conditioned, sizes

    def _build_indices(self):
        c = self.config
        capacity = c.sequence_length + 1
        epochs = 1
        while True:
            document_index, conditioned, sizes = self._occurrences(epochs, c.random_seed)
            sample_index = packing.pack_whole(sizes, capacity)
            samples = len(sample_index) - 1
            if self.num_samples is None or samples >= self.num_samples or len(self.indices) == 0:
                break
            per_epoch = max(samples / epochs, 1e-9)
            epochs = max(epochs + 1, int(np.ceil(self.num_samples / per_epoch)))
        truncated = int(np.count_nonzero(sizes > capacity))
        if truncated:
            logger.warning("%s (%s): %d of %d conversation occurrences are longer than --seq-length + 1 = %d "
                           "tokens and are cut there (tools/preprocess_data.py --sft --seq-length N --overlong "
                           "decides this at preprocessing)", self.dataset.path_prefix, self.index_split.name,
                           truncated, len(sizes), capacity)
        shuffle_index = _build_shuffle_index(samples, samples, np.random.RandomState(c.random_seed))
        return document_index, sample_index, shuffle_index, conditioned

    def __len__(self) -> int:
        return len(self.sample_index) - 1

    def __getitem__(self, idx: Optional[int]) -> dict[str, torch.Tensor]:
        capacity = self.config.sequence_length + 1
        tokens = np.full(capacity, self.config.tokenizer.eod, dtype=np.int64)
        roles = np.zeros(capacity, dtype=np.uint8)
        positions = np.zeros(capacity, dtype=np.int64)
        level = np.zeros(capacity, dtype=np.int64)
        k = int(self.shuffle_index[0 if idx is None else idx])
        pos = 0
        for occurrence in range(int(self.sample_index[k]), int(self.sample_index[k + 1])):
            doc = int(self.document_index[occurrence])
            ids, r = self.dataset.conversation(doc, bool(self.conditioned[occurrence]))
            n = min(len(ids), capacity - pos)
            tokens[pos:pos + n], roles[pos:pos + n] = ids[:n], r[:n]
            positions[pos:pos + n] = np.arange(n)
            level[pos:pos + n] = self.dataset.levels[doc]
            pos += n
        positions[pos:] = np.arange(capacity - pos)  # the padding is a document of its own
        label_roles = roles[1:]
        loss_mask = ((label_roles & LOSS) != 0).astype(np.float32)
        if idx is None:
            loss_mask[:] = 0.0
        return {
            "tokens": torch.from_numpy(tokens[:-1].copy()),
            "labels": torch.from_numpy(tokens[1:].copy()),
            "loss_mask": torch.from_numpy(loss_mask),
            "position_ids": torch.from_numpy(positions[:-1].copy()),
            "prefix_mask": torch.from_numpy((((label_roles & FEEDBACK) != 0) & ((label_roles & LOSS) == 0))
                                            .astype(np.float32)),
            "text_mask": torch.from_numpy(loss_mask.copy()),
            "orphan_mask": torch.zeros(capacity - 1, dtype=torch.float32),
            "token_level": torch.from_numpy(level[1:].copy()),
        }
