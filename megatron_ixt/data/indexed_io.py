"""Writing megatron-core indexed datasets (`.bin` / `.idx`) and the `.ixt.npy` side file.

The `.idx` layout (megatron.core.datasets.indexed_dataset, little-endian):

    b"MMIDIDX\\x00\\x00"  <Q version=1  <B dtype code  <Q S (sequences)  <Q D (documents + 1)
    int32 sequence_lengths[S]   int64 sequence_pointers[S] (byte offsets into .bin)
    int64 document_indices[D]   (0, then the end sequence of every document)

`DatasetWriter` assembles one output dataset from the shards that the workers wrote, in
input order. It produces exactly the bytes that megatron-core's `IndexedDatasetBuilder`
would (the tests check this against `add_document` and `add_index`), but keeps the index
as compact numpy chunks (4 bytes per sequence + 4 per document) instead of Python lists of
numpy scalars, and copies each shard's `.bin` with `os.sendfile` (no pass through Python).
Memory therefore grows only with the index arrays, never with the token data.

Plain numpy, no megatron-core import: the data tools start in a fraction of a second (the
dtype codes below are megatron-core's `DType`; tests/data/test_indexed_io.py checks them).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Optional

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"

DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5,
               np.float64: 6, np.float32: 7, np.uint16: 8}
"""megatron-core's `indexed_dataset.DType`: numpy type -> code byte of the `.idx` header."""

SIDE_FILE_SUFFIX = ".ixt.npy"
META_FILE_SUFFIX = ".meta.json"
PREFIX_LENGTH_COLUMN = 0
"""Side-file column: prefix length in tokens, both delimiters included (0: no prefix)."""
QUALITY_LEVEL_COLUMN = 1
"""Side-file column: quality level 1..5 (0: not annotated)."""


def token_dtype(vocab_size: int) -> type:
    """The token dtype megatron-core picks (`DType.optimal_dtype`): uint16 below 65500
    tokens, else (or for an unknown size) int32."""
    if vocab_size is not None and vocab_size < 65500:
        return np.uint16
    return np.int32


def dtype_code(dtype) -> int:
    """The `.idx` header's code for `dtype`."""
    return DTYPE_CODES[np.dtype(dtype).type]


@dataclass
class Shard:
    """One worker's output for one batch and one json key."""

    bin_path: Optional[str]
    """Token file written by the worker (None when the batch produced no tokens)."""
    num_tokens: int
    sequence_lengths: np.ndarray
    """int32 [S]: tokens per sequence."""
    sequences_per_document: np.ndarray
    """int32 [D]: sequences per document (0 for an empty document)."""
    side: np.ndarray
    """int32 [S, 2]: prefix length and quality level per sequence."""


def write_shard_bin(path: str, tokens: np.ndarray) -> None:
    """Write a shard's token array (already in the output dtype)."""
    with open(path, "wb") as f:
        f.write(tokens.tobytes(order="C"))


def _append_file(dst_fd: int, src_path: str, size: int) -> None:
    """Append `size` bytes of `src_path` at the current position of `dst_fd`."""
    start = os.lseek(dst_fd, 0, os.SEEK_CUR)
    with open(src_path, "rb") as src:
        try:
            sent = 0
            while sent < size:
                n = os.sendfile(dst_fd, src.fileno(), sent, size - sent)
                if n == 0:
                    raise RuntimeError(f"shard {src_path} is shorter than its {size} bytes")
                sent += n
            return
        except (AttributeError, OSError):
            # No sendfile for these files (or not on this OS): undo and copy through Python.
            os.ftruncate(dst_fd, start)
            os.lseek(dst_fd, start, os.SEEK_SET)
        for block in iter(lambda: src.read(1 << 20), b""):
            view = memoryview(block)
            while view:
                view = view[os.write(dst_fd, view):]


class DatasetWriter:
    """Appends shards in order to one `.bin`; writes `.idx` and `.ixt.npy` at `finalize`."""

    def __init__(self, bin_path: str, idx_path: str, side_path: str, dtype: type):
        self.bin_path, self.idx_path, self.side_path = bin_path, idx_path, side_path
        self.dtype = np.dtype(dtype)
        self._bin_fd = os.open(bin_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._lengths: list[np.ndarray] = []
        self._docs: list[np.ndarray] = []
        self._side: list[np.ndarray] = []
        self.num_tokens = 0
        self.num_sequences = 0
        self.num_documents = 0

    def append(self, shard: Shard) -> None:
        if shard.num_tokens:
            _append_file(self._bin_fd, shard.bin_path, shard.num_tokens * self.dtype.itemsize)
        self._lengths.append(shard.sequence_lengths.astype(np.int32, copy=False))
        self._docs.append(shard.sequences_per_document.astype(np.int32, copy=False))
        self._side.append(shard.side.astype(np.int32, copy=False))
        self.num_tokens += shard.num_tokens
        self.num_sequences += len(shard.sequence_lengths)
        self.num_documents += len(shard.sequences_per_document)

    def finalize(self) -> None:
        os.close(self._bin_fd)
        self._bin_fd = -1
        write_index(self.idx_path, self.dtype, self._lengths, self._docs)
        write_side_file(self.side_path, self._side, self.num_sequences)

    def close(self) -> None:
        """Release the file handle without finishing (on errors)."""
        if self._bin_fd >= 0:
            os.close(self._bin_fd)
            self._bin_fd = -1


def write_index(
    idx_path: str, dtype: np.dtype, length_chunks: list[np.ndarray], docs_chunks: list[np.ndarray]
) -> None:
    """Write an `.idx` from chunks of sequence lengths and of sequences-per-document.

    Written chunk by chunk, so no second full-size copy of the index is ever made.
    """
    num_sequences = sum(len(c) for c in length_chunks)
    num_documents = sum(len(c) for c in docs_chunks)
    itemsize = np.int64(np.dtype(dtype).itemsize)
    with open(idx_path, "wb") as f:
        f.write(INDEX_HEADER)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", dtype_code(dtype)))
        f.write(struct.pack("<Q", num_sequences))
        f.write(struct.pack("<Q", num_documents + 1))
        for chunk in length_chunks:
            f.write(np.ascontiguousarray(chunk, dtype="<i4").tobytes())
        offset = np.int64(0)
        for chunk in length_chunks:
            ends = np.cumsum(chunk, dtype=np.int64) * itemsize + offset
            starts = np.empty_like(ends)
            starts[:1] = offset
            starts[1:] = ends[:-1]
            f.write(starts.astype("<i8").tobytes())
            if len(ends):
                offset = ends[-1]
        f.write(np.zeros(1, dtype="<i8").tobytes())
        done = np.int64(0)
        for chunk in docs_chunks:
            ends = np.cumsum(chunk, dtype=np.int64) + done
            f.write(ends.astype("<i8").tobytes())
            if len(ends):
                done = ends[-1]


def write_side_file(path: str, chunks: list[np.ndarray], num_rows: int) -> None:
    """Write the `[num_sequences, 2]` int32 `.npy` side file from row chunks."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<i4", "fortran_order": False, "shape": (num_rows, 2)}
        )
        for chunk in chunks:
            f.write(np.ascontiguousarray(chunk, dtype="<i4").tobytes())


def read_side_file(dataset_prefix: str, mmap: bool = True) -> np.ndarray:
    """The side file of a preprocessed dataset: int32 `[num_sequences, 2]`.

    `dataset_prefix` is the path without extension, as given to megatron-core's
    `IndexedDataset` (e.g. `out/corpus_text_document`). Column 0
    (`PREFIX_LENGTH_COLUMN`) is the prefix length of each sequence in tokens, delimiters
    included; column 1 (`QUALITY_LEVEL_COLUMN`) its quality level, 0 when not annotated.
    """
    path = dataset_prefix + SIDE_FILE_SUFFIX
    array = np.load(path, mmap_mode="r" if mmap else None)
    if array.ndim != 2 or array.shape[1] != 2 or array.dtype != np.int32:
        raise ValueError(f"{path}: expected an int32 array of shape [num_sequences, 2], got {array.dtype} {array.shape}")
    return array


def read_metadata(dataset_prefix: str) -> dict:
    """The `.meta.json` of a preprocessed dataset (tokenizer, template, thresholds, counts)."""
    import json

    with open(dataset_prefix + META_FILE_SUFFIX, encoding="utf-8") as f:
        return json.load(f)
