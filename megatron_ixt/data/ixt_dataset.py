"""The IXT dataset: megatron-core's ``GPTDataset`` with feedback prefixes made visible.

Each document of a preprocessed dataset is one sequence ``[prefix][text][eod]``; the side
file ``<prefix>.ixt.npy`` gives each sequence's prefix length and quality level. This
class changes exactly three things of ``GPTDataset``:

1. **Prefix dropout and cooldown happen before packing.** The sample index is built over
   *occurrences* (a document in a given epoch), each with its effective length: the full
   sequence, or the sequence without its prefix when dropout chose so for that
   (document, epoch) -- a pure function of the seed, stable across runs and layouts. With
   ``--ixt-cooldown-fraction F`` every occurrence from the start of the last F of the
   training samples on loses its prefix; those samples are shuffled among themselves only,
   so they are consumed last.
2. **Repeat-prefix packing** (``--ixt-repeat-prefix``): a document that continues from the
   previous sample starts its new sample with its prefix again; the packer accounts for
   the inserted tokens, so nothing is truncated. Without it, such text tokens are counted
   (``orphan_mask``) and the loop reports their share.
3. **Per-token masks**: ``prefix_mask`` / ``text_mask`` over the labels, ``loss_mask``
   without prefix tokens under ``--ixt-prefix-loss exclude``, and ``token_level`` (the
   quality level of the document each label belongs to) for per-level validation losses.

Everything else (splits, blends, caching on rank 0, shuffling, document-aware masks via
``reset_attention_mask`` / ``reset_position_ids``) is megatron-core's.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from megatron.core.datasets.gpt_dataset import (
    GPTDataset, GPTDatasetConfig, _build_document_index, _build_shuffle_index)
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.utils import Split

from megatron_ixt.data import packing
from megatron_ixt.data.batch import IXT_FIELDS
from megatron_ixt.format.indexed_io import read_side_file

logger = logging.getLogger(__name__)


@dataclass
class IXTDatasetConfig(GPTDatasetConfig):
    ixt_prefix_loss: str = "include"
    """'include': prefix tokens are trained on; 'exclude': masked from the loss."""

    ixt_feedback_dropout: float = 0.0
    """Probability that an annotated document loses its prefix, per (document, epoch)."""

    ixt_repeat_prefix: bool = False
    """Re-insert a document's prefix at the start of each sample it continues into."""

    ixt_index_version: int = packing.VERSION
    """The index-building algorithm's version (``packing.VERSION``): part of the cache key."""
    ixt_cooldown_fraction: float = 0.0
    """Last fraction of the training samples without any prefix (train split only)."""


def loss_mask_and_position_ids(tokens: np.ndarray, eod: int, reset_position_ids: bool,
                               eod_mask_loss: bool) -> tuple[np.ndarray, np.ndarray]:
    """The loss mask (float32) and position ids (int64) of megatron-core's
    ``_get_ltor_masks_and_position_ids``, in NumPy: a handful of vector operations on the
    sample (its Python loop over EOD tokens, or the equivalent torch calls, cost more per
    sample than the whole rest of ``__getitem__``)."""
    s = tokens.shape[0]
    loss_mask = np.ones(s, dtype=np.float32)
    position_ids = np.arange(s, dtype=np.int64)
    if eod_mask_loss or reset_position_ids:
        is_eod = tokens == eod
        if eod_mask_loss:
            loss_mask[is_eod] = 0.0
        if reset_position_ids:
            # Positions restart after each EOD: subtract the start of the token's document.
            after_eod = np.flatnonzero(is_eod[:-1]) + 1
            if after_eod.size:
                starts = np.zeros(s, dtype=np.int64)
                starts[after_eod] = after_eod
                position_ids -= np.maximum.accumulate(starts)
    return loss_mask, position_ids


def document_masks(tokens: torch.Tensor, eod: int, reset_position_ids: bool, reset_attention_mask: bool,
                   eod_mask_loss: bool, create_attention_mask: bool):
    """megatron-core's ``_get_ltor_masks_and_position_ids``, vectorised: it loops over the
    EOD tokens of a sample and rewrites an [s, s] mask per EOD (O(docs x s^2)); here each
    token gets the index of its document segment once (an EOD belongs to the document it
    ends) and the mask is one comparison. Same outputs (tests/test_ixt_dataset.py checks
    them against megatron-core's)."""
    loss_mask, position_ids = loss_mask_and_position_ids(tokens.numpy(), eod, reset_position_ids, eod_mask_loss)
    attention_mask = None
    if create_attention_mask:
        s = tokens.numel()
        is_eod = tokens == eod
        segment = torch.cumsum(is_eod, 0) - is_eod.long()
        allowed = torch.ones(s, s, dtype=torch.bool).tril_()
        if reset_attention_mask:
            allowed &= segment.unsqueeze(1) == segment.unsqueeze(0)
        attention_mask = (~allowed).unsqueeze(0)  # True = masked, as megatron-core returns it
    return attention_mask, torch.from_numpy(loss_mask), torch.from_numpy(position_ids)


class IXTLowLevelDataset:
    """An ``IndexedDataset`` plus its side file (prefix length and quality level per sequence)."""

    def __init__(self, path_prefix: str, mmap: bool = True) -> None:
        self.indexed = IndexedDataset(path_prefix, multimodal=False, mmap=mmap)
        side = read_side_file(path_prefix)
        if side.shape[0] != len(self.indexed):
            raise ValueError(f"{path_prefix}.ixt.npy has {side.shape[0]} rows, the dataset {len(self.indexed)} sequences")
        self.prefix_lengths = np.ascontiguousarray(side[:, 0])
        self.levels = np.ascontiguousarray(side[:, 1])
        self.path_prefix = path_prefix
        self.sequence_lengths = self.indexed.sequence_lengths

    def __len__(self) -> int:
        return len(self.indexed)

    def get(self, idx: int, offset: int = 0, length: Optional[int] = None) -> np.ndarray:
        return self.indexed.get(idx, offset=offset, length=length)


class IXTDataset(GPTDataset):
    """See the module docstring."""

    config: IXTDatasetConfig
    BATCH_FIELDS = IXT_FIELDS  # what __getitem__ returns (data/batch.py)

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: IXTDatasetConfig) -> IXTLowLevelDataset:
        return IXTLowLevelDataset(dataset_path, mmap=config.mmap_bin_files)

    @staticmethod
    def numel_low_level_dataset(low_level_dataset: IXTLowLevelDataset) -> int:
        return low_level_dataset.sequence_lengths.shape[0]

    @staticmethod
    def _key_config_attributes() -> list[str]:
        return GPTDataset._key_config_attributes() + [
            "ixt_feedback_dropout", "ixt_repeat_prefix", "ixt_cooldown_fraction", "ixt_prefix_loss",
            "ixt_index_version"]

    # -- index building ---------------------------------------------------------------

    def _cooldown_start(self) -> Optional[int]:
        """First training sample (in consumption order) of the cooldown, or None."""
        f = self.config.ixt_cooldown_fraction
        if self.index_split != Split.train or f <= 0 or self.num_samples is None:
            return None
        requested = self.num_samples
        if self.config.blend and self.config.blend[1] is not None:
            # Inside a blend each dataset is asked for its share plus a surplus; the cooldown
            # starts at the same fraction of its share (exact up to the blend's rounding).
            requested = int(requested / (1 + self.config.mid_level_dataset_surplus))
        return int((1.0 - f) * requested)

    def _pack(self, document_index: np.ndarray, dropped: np.ndarray, total_tokens: int) -> np.ndarray:
        longest = int(self.dataset.prefix_lengths.max(initial=0))
        if self.config.ixt_repeat_prefix and longest >= self.config.sequence_length:
            raise ValueError(
                f"{self.dataset.path_prefix}: --ixt-repeat-prefix needs prefixes shorter than a sample, but the "
                f"longest is {longest} tokens with --seq-length {self.config.sequence_length}: use a longer "
                "--seq-length, a shorter --prefix-template (e.g. quality), or drop --ixt-repeat-prefix")
        # Compiled (packing.py): reads sizes, prefixes and dropout through the occurrence index,
        # so 10^8 occurrences pack in seconds with no per-occurrence temporaries.
        return packing.pack(document_index, self.dataset.sequence_lengths, self.dataset.prefix_lengths, dropped,
                            self.config.sequence_length, self.config.add_extra_token_to_sequence,
                            repeat_prefix=self.config.ixt_repeat_prefix, total_tokens=total_tokens)

    def _num_epochs(self, tokens_per_epoch: int, prefix_tokens_per_epoch: int) -> int:
        """Epochs in closed form, as ``GPTDataset._get_num_epochs``: the fewest whose tokens
        cover ``num_samples`` samples. Dropout and the cooldown only ever remove prefix
        tokens, so when either is on the count assumes every prefix may go; re-inserted
        prefixes only add samples. One packing therefore always yields enough samples."""
        if self.num_samples is None:
            return 1
        usable = tokens_per_epoch
        if self.config.ixt_feedback_dropout > 0 or self._cooldown_start() is not None:
            usable -= prefix_tokens_per_epoch
        if usable <= 0:
            return 1
        requested = self.num_samples * self.config.sequence_length + self.config.add_extra_token_to_sequence
        return max(1, -(-requested // usable))

    def _build_indices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        c = self.config
        prefix_lengths = self.dataset.prefix_lengths
        tokens, prefix_tokens = packing.epoch_tokens(self.indices, self.dataset.sequence_lengths, prefix_lengths)
        num_epochs = self._num_epochs(tokens, prefix_tokens)
        document_index = _build_document_index(self.indices, num_epochs, np.random.RandomState(c.random_seed), False)
        # One splitmix64 draw per (seed, document, epoch): a document's k-th occurrence is its epoch k.
        dropped = packing.dropout_flags(document_index, prefix_lengths, c.random_seed, c.ixt_feedback_dropout)
        sample_index = self._pack(document_index, dropped, tokens * num_epochs)
        cooldown = self._cooldown_start()
        if cooldown is not None and cooldown < len(sample_index) - 1:
            occ, off = (int(x) for x in sample_index[cooldown])
            first = occ + 1 if off > 0 else occ
            dropped[first:] |= prefix_lengths[document_index[first:]] > 0
            sample_index = self._pack(document_index, dropped, tokens * num_epochs)  # samples before `cooldown` are unchanged
        rng = np.random.RandomState(c.random_seed)
        n = len(sample_index) - 1
        first = cooldown if cooldown is not None and cooldown < n else n
        # Shuffle the cooldown samples only among themselves, so that they come last.
        shuffle_index = _build_shuffle_index(first, n, rng)
        return document_index.astype(np.int32), sample_index, shuffle_index, dropped

    def _build_document_sample_shuffle_indices(self):
        """Build (or load from the cache, built on rank 0) the occurrence, sample and shuffle
        indices and the per-occurrence dropped flags."""
        path_to_cache = self.config.path_to_cache or os.path.join(
            os.path.dirname(self.dataset.path_prefix), "cache", f"{type(self).__name__}_indices")
        base = os.path.join(path_to_cache, f"{self.unique_description_hash}-{type(self).__name__}-{self.index_split.name}")
        names = ("document_index", "sample_index", "shuffle_index", "prefix_dropped")
        paths = [f"{base}-{n}.npy" for n in names]
        rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        if not all(os.path.isfile(p) for p in paths) and rank0:
            start = time.time()
            arrays = self._build_indices()
            os.makedirs(path_to_cache, exist_ok=True)
            with open(f"{base}-description.txt", "w") as f:
                f.write(self.unique_description)
            for path, array in zip(paths, arrays):
                tmp = f"{path}.tmp{os.getpid()}.npy"
                np.save(tmp, array)
                os.replace(tmp, path)  # a reader never sees a half-written index
            logger.info("built IXT %s indices in %.2f s: %d samples", self.index_split.name, time.time() - start,
                        len(arrays[1]) - 1)
        else:
            # Other ranks arrive here after the builder's barrier, once rank 0 has written them.
            arrays = [np.load(p, mmap_mode="r") for p in paths]
        document_index, sample_index, shuffle_index, self.prefix_dropped = arrays
        return document_index, sample_index, shuffle_index

    def __len__(self) -> int:
        return self.sample_index.shape[0] - 1

    # -- samples ------------------------------------------------------------------------

    def sample_parts(self, idx: int) -> list[tuple[int, int, int, bool, int]]:
        """The pieces of sample ``idx`` (after shuffling): ``(sequence id, raw offset, length,
        is the prefix dropped, re-inserted prefix tokens)`` per occurrence it touches."""
        idx = int(self.shuffle_index[idx])
        # One .tolist() per array instead of an int() per element: this runs once per sample.
        (beg, beg_off), (end, end_off) = self.sample_index[idx:idx + 2].tolist()
        extra = self.config.add_extra_token_to_sequence
        repeat = self.config.ixt_repeat_prefix
        docs = self.document_index[beg:end + 1].tolist()
        dropped_flags = self.prefix_dropped[beg:end + 1].tolist()
        prefix_lengths, sequence_lengths = self.dataset.prefix_lengths, self.dataset.sequence_lengths
        parts = []
        for k, (doc, dropped) in enumerate(zip(docs, dropped_flags)):
            prefix = int(prefix_lengths[doc])
            skip = prefix if dropped else 0
            start = beg_off if k == 0 else 0
            stop = (end_off + extra) if k == end - beg else int(sequence_lengths[doc]) - skip
            inserted = min(start, prefix) if (k == 0 and start > 0 and repeat and not dropped) else 0
            if stop - start > 0 or inserted:
                parts.append((doc, start + skip, stop - start, bool(dropped), inserted))
        return parts

    def _masks(self, tokens: np.ndarray):
        """(attention mask or None, loss mask, position ids); the [s, s] mask only with
        ``create_attention_mask``."""
        c = self.config
        if c.create_attention_mask:
            attention_mask, loss_mask, position_ids = document_masks(
                torch.from_numpy(tokens), c.tokenizer.eod, c.reset_position_ids, c.reset_attention_mask,
                c.eod_mask_loss, True)
            return attention_mask, loss_mask.numpy(), position_ids
        if self.masks_and_position_ids_are_cacheable:  # no per-document masks: same for every sample
            if not self.masks_and_position_ids_are_cached:
                self.cached_loss_mask, self.cached_position_ids = loss_mask_and_position_ids(tokens, c.tokenizer.eod,
                                                                                             False, False)
                self.masks_and_position_ids_are_cached = True
            return None, self.cached_loss_mask.copy(), torch.from_numpy(self.cached_position_ids)
        loss_mask, position_ids = loss_mask_and_position_ids(tokens, c.tokenizer.eod, c.reset_position_ids,
                                                             c.eod_mask_loss)
        return None, loss_mask, torch.from_numpy(position_ids)

    def __getitem__(self, idx: Optional[int]) -> dict[str, torch.Tensor]:
        parts = self.sample_parts(0 if idx is None else idx)
        total = self.config.sequence_length + self.config.add_extra_token_to_sequence
        text = np.full(total, self._pad_token_id, dtype=np.int64)
        is_prefix = np.zeros(total, dtype=bool)
        orphan = np.zeros(total, dtype=bool)
        level = np.zeros(total, dtype=np.int64)
        pos = 0
        for i, (doc, offset, length, dropped, inserted) in enumerate(parts):
            prefix_len = int(self.dataset.prefix_lengths[doc])
            if inserted:
                text[pos:pos + inserted] = self.dataset.get(doc, 0, inserted)
                is_prefix[pos:pos + inserted] = True
                level[pos:pos + inserted] = self.dataset.levels[doc]
                pos += inserted
            length = min(length, total - pos)
            text[pos:pos + length] = self.dataset.get(doc, offset, length)
            # Tokens [offset, offset + length) of the sequence; its prefix is [0, prefix_len).
            in_prefix = 0 if dropped else min(length, max(0, prefix_len - offset))
            is_prefix[pos:pos + in_prefix] = True
            # Text whose document starts in an earlier sample, with no prefix re-inserted.
            if i == 0 and offset > 0 and prefix_len > 0 and not dropped and not inserted:
                orphan[pos + in_prefix:pos + length] = True
            level[pos:pos + length] = self.dataset.levels[doc]
            pos += length

        # Per-token work in NumPy (a few microseconds); tensors only at the end.
        labels = text[1:]
        pad = labels == self._pad_token_id
        label_prefix = is_prefix[1:]
        attention_mask, loss_mask, position_ids = self._masks(text[:-1])
        loss_mask[pad] = 0.0
        if self.config.ixt_prefix_loss == "exclude":
            loss_mask[label_prefix] = 0.0
        if idx is None:
            loss_mask[:] = 0.0
        text[text == self._pad_token_id] = 0
        sample = {
            "tokens": torch.from_numpy(text[:-1].copy()),
            "labels": torch.from_numpy(text[1:].copy()),
            "loss_mask": torch.from_numpy(loss_mask),
            "position_ids": position_ids,
            "prefix_mask": torch.from_numpy(label_prefix.astype(np.float32)),
            "text_mask": torch.from_numpy((~label_prefix & ~pad).astype(np.float32)),
            "orphan_mask": torch.from_numpy(orphan[1:].astype(np.float32)),
            "token_level": torch.from_numpy(level[1:].copy()),
        }
        if attention_mask is not None:
            sample["attention_mask"] = attention_mask
        return sample
