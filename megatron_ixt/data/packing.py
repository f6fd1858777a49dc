"""Compiled index kernels of the IXT dataset (numba): prefix dropout and sample packing.

megatron-core builds GPTDataset's sample index in C++ (`helpers.build_sample_idx`, tens of
millions of documents per second); rank 0 does it while every other rank waits on a
barrier. The IXT dataset needs two things it cannot express: re-inserted prefixes that
take room in a sample (`--ixt-repeat-prefix`) and per-occurrence prefix dropout. These
kernels do both in one pass over the occurrences, reading the per-sequence arrays through
the document index, so no per-occurrence `sizes` / `insert` / hash temporaries are made
(at 10^8 occurrences each such array is 0.4-0.8 GB).

* `dropout_flags` - a splitmix64 draw per (seed, document, epoch), per occurrence, without
  uint64 temporaries.
* `pack` - Megatron's greedy packing over occurrences, paying for re-inserted prefixes;
  with nothing re-inserted its output equals `helpers.build_sample_idx`'s.

tests/test_ixt_dataset.py checks both against readable numpy/Python references
(`uniform_hash`, `pack_samples`), which live there: the package has one implementation.

Compiled on first use and cached next to this file (`cache=True`), so a run pays the
compilation (about a second) once per installation, not once per job.
"""

from __future__ import annotations

import numba
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


VERSION = 2
"""The index-building algorithm's version, part of the datasets' cache keys (an index built by
another version is never reused). 2: a document's dropout is drawn per repeat of it; 1 keyed
the draw on ``i // len(documents)``, which is not the epoch once megatron-core has shuffled
all epochs together, so that a document's repeats shared draws."""


@numba.njit(cache=True, nogil=True)
def _dropout_kernel(document_index, prefix_lengths, seed, rate, out):
    seed_term = np.uint64(seed) * _MIX2
    repeats = np.zeros(prefix_lengths.shape[0], dtype=np.int64)
    for i in range(document_index.shape[0]):
        doc = document_index[i]
        epoch = repeats[doc]  # this occurrence is the document's epoch-th (megatron-core shuffles epochs together)
        repeats[doc] += 1
        if prefix_lengths[doc] <= 0:
            out[i] = False
            continue
        x = (np.uint64(doc) * _GOLDEN) ^ ((np.uint64(epoch) + np.uint64(1)) * _MIX1) ^ seed_term
        x ^= x >> np.uint64(30)
        x *= _MIX1
        x ^= x >> np.uint64(27)
        x *= _MIX2
        x ^= x >> np.uint64(31)
        out[i] = np.float64(x >> np.uint64(11)) / 9007199254740992.0 < rate


def dropout_flags(document_index: np.ndarray, prefix_lengths: np.ndarray, seed: int, rate: float) -> np.ndarray:
    """bool per occurrence: its document has a prefix and the splitmix64 draw of (seed,
    document, epoch) is below `rate`, where an occurrence's epoch is how many times its
    document occurred before it: each document occurs once per epoch, so its repeats draw
    independently wherever the shuffle put them."""
    out = np.empty(len(document_index), dtype=bool)
    if rate <= 0 or len(document_index) == 0:
        out[:] = False
        return out
    _dropout_kernel(document_index, prefix_lengths, np.uint64(seed & 0xFFFFFFFFFFFFFFFF), float(rate), out)
    return out


@numba.njit(cache=True, nogil=True)
def _pack_kernel(document_index, sequence_lengths, prefix_lengths, dropped, repeat_prefix, seq_length, extra,
                 out, row, doc, offset):
    """Fill `out[row:]` with sample boundaries from state (doc, offset). Returns
    (rows, doc, offset, status): status 0 = input exhausted, 1 = `out` full (call again with a
    bigger one), 2 = a re-inserted prefix leaves no room for text at occurrence `doc`."""
    n = document_index.shape[0]
    capacity = out.shape[0]
    while True:
        if row == capacity:
            return row, doc, offset, 1
        remaining = seq_length + extra
        if repeat_prefix and offset > 0 and not dropped[doc]:
            inserted = prefix_lengths[document_index[doc]]
            if inserted > offset:
                inserted = offset
            remaining -= inserted
            if remaining <= extra:
                return row, doc, offset, 2
        while remaining > 0:
            d = document_index[doc]
            size = sequence_lengths[d]
            if dropped[doc]:
                size -= prefix_lengths[d]
            doc_length = size - offset
            remaining -= doc_length
            if remaining <= 0:
                offset += remaining + doc_length - extra
                remaining = 0
            else:
                doc += 1
                offset = 0
                if doc == n:
                    return row, doc, offset, 0
        out[row, 0] = doc
        out[row, 1] = offset
        row += 1


@numba.njit(cache=True, nogil=True)
def _total_tokens(document_index, sequence_lengths, prefix_lengths, dropped):
    total = 0
    for i in range(document_index.shape[0]):
        d = document_index[i]
        total += sequence_lengths[d] - (prefix_lengths[d] if dropped[i] else 0)
    return total


@numba.njit(cache=True, nogil=True)
def _epoch_tokens(indices, sequence_lengths, prefix_lengths):
    tokens = 0
    prefix_tokens = 0
    for i in range(indices.shape[0]):
        tokens += sequence_lengths[indices[i]]
        prefix_tokens += prefix_lengths[indices[i]]
    return tokens, prefix_tokens


def epoch_tokens(indices: np.ndarray, sequence_lengths: np.ndarray, prefix_lengths: np.ndarray) -> tuple[int, int]:
    """(tokens, prefix tokens) of one epoch over the sequences `indices`."""
    if len(indices) == 0:
        return 0, 0
    tokens, prefix_tokens = _epoch_tokens(indices, sequence_lengths, prefix_lengths)
    return int(tokens), int(prefix_tokens)


def pack(document_index: np.ndarray, sequence_lengths: np.ndarray, prefix_lengths: np.ndarray,
         dropped: np.ndarray, seq_length: int, add_extra_token: int = 1, repeat_prefix: bool = False,
         total_tokens: int | None = None) -> np.ndarray:
    """Sample boundaries `[num_samples + 1, 2]` (occurrence, offset) over the occurrences
    `document_index`; occurrence `i` is sequence `document_index[i]` without its prefix when
    `dropped[i]`. With `repeat_prefix`, a sample starting at offset `e > 0` inside an
    occurrence with a prefix of `p` tokens begins with `min(e, p)` re-inserted prefix tokens
    that take room in it. Only complete samples. int32 when the values fit (as
    `helpers.build_sample_idx` returns), else int64. `total_tokens` (the occurrences' tokens,
    when the caller knows it) only sizes the output; it saves one pass."""
    n = len(document_index)
    longest = int(sequence_lengths.max(initial=0)) if len(sequence_lengths) else 0
    dtype = np.int32 if max(n, longest) <= np.iinfo(np.int32).max else np.int64
    if total_tokens is None:
        total_tokens = int(_total_tokens(document_index, sequence_lengths, prefix_lengths, dropped)) if n else 0
    total = total_tokens
    # Exact without re-insertion (each sample takes seq_length new tokens); a re-inserting
    # packer makes more samples, and the kernel then resumes into a grown array.
    capacity = max(total - add_extra_token, 0) // seq_length + 2
    out = np.empty((capacity, 2), dtype=dtype)
    out[0] = 0
    row, doc, offset = 1, 0, 0
    if n:
        while True:
            row, doc, offset, status = _pack_kernel(document_index, sequence_lengths, prefix_lengths, dropped,
                                                    repeat_prefix, seq_length, add_extra_token, out, row, doc, offset)
            if status == 0:
                break
            if status == 2:
                raise ValueError(
                    f"--ixt-repeat-prefix: a {int(prefix_lengths[document_index[doc]])}-token prefix does not fit in a "
                    f"{seq_length}-token sample with room for text")
            grown = np.empty((int(len(out) * 1.5) + 16, 2), dtype=dtype)
            grown[:row] = out[:row]
            out = grown
    return out[:row].copy() if row < len(out) // 2 else out[:row]


@numba.njit(cache=True, nogil=True)
def _count_role_kernel(roles, lengths, bit, out):
    start = 0
    for i in range(lengths.shape[0]):
        n = 0
        for j in range(start, start + lengths[i]):
            if roles[j] & bit:
                n += 1
        out[i] = n
        start += lengths[i]


def count_role(roles: np.ndarray, lengths: np.ndarray, bit: int) -> np.ndarray:
    """int32 per sequence: its tokens whose role has ``bit`` (SFT roles file, in one pass
    over the memory map)."""
    out = np.zeros(len(lengths), dtype=np.int32)
    if len(lengths):
        _count_role_kernel(roles, lengths.astype(np.int64), np.uint8(bit), out)
    return out


@numba.njit(cache=True, nogil=True)
def _pack_whole_kernel(sizes, capacity, out):
    rows = 1
    used = 0
    for i in range(sizes.shape[0]):
        size = min(sizes[i], capacity)
        if used > 0 and used + size > capacity:
            out[rows] = i
            rows += 1
            used = 0
        used += size
    out[rows] = sizes.shape[0]
    return rows + 1


def pack_whole(sizes: np.ndarray, capacity: int) -> np.ndarray:
    """SFT packing: sample boundaries ``[num_samples + 1]`` over occurrences of ``sizes``
    tokens, greedy in order, never splitting an occurrence: sample ``k`` holds occurrences
    ``[out[k], out[k + 1])``; one longer than ``capacity`` fills a sample alone (cut there)."""
    out = np.zeros(len(sizes) + 2, dtype=np.int64)
    if len(sizes) == 0:
        return out[:1]
    rows = _pack_whole_kernel(sizes.astype(np.int64), int(capacity), out)
    return out[:rows]
