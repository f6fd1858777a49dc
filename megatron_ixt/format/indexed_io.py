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

`DatasetWriter.append_dataset` appends a whole finished dataset (a SLURM shard; see
`megatron_ixt.preprocess.merge`) the same way, through memory maps of its files, written in
pieces of `PIECE` elements: a merge runs in constant memory, whatever the number of
documents.

Plain numpy, no megatron-core import: the data tools start in a fraction of a second (the
dtype codes below are megatron-core's `DType`; tests/data/test_indexed_io.py checks them).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Optional

import numpy as np

from megatron_ixt.format.errors import InputError

INDEX_HEADER = b"MMIDIDX\x00\x00"

DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5,
               np.float64: 6, np.float32: 7, np.uint16: 8}
"""megatron-core's `indexed_dataset.DType`: numpy type -> code byte of the `.idx` header."""

SIDE_FILE_SUFFIX = ".ixt.npy"
META_FILE_SUFFIX = ".meta.json"
ROLES_FILE_SUFFIX = ".roles.bin"
"""SFT datasets only: one uint8 per token of the `.bin`, in the same order: the role bits of
`tokenizers.chat` (1 = in the loss, 2 = feedback, 4 = only without feedback)."""
PREFIX_LENGTH_COLUMN = 0
"""Side-file column: prefix length in tokens, both delimiters included (0: no prefix)."""
QUALITY_LEVEL_COLUMN = 1
"""Side-file column: quality level 1..5 (0: not annotated)."""

PIECE = 1 << 20
"""Elements written per step from a memory-mapped array (bounds the merge's memory)."""
_HEADER_BYTES = len(INDEX_HEADER) + 8 + 1 + 8 + 8


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
    roles_path: Optional[str] = None
    """SFT only: the roles of the shard's tokens (one uint8 each)."""


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


@dataclass
class IndexFile:
    """A finished dataset's `.idx`, memory-mapped (nothing is read until used)."""

    path: str
    dtype: np.dtype
    sequence_lengths: np.ndarray
    """int32 [S], memory-mapped."""
    document_indices: np.ndarray
    """int64 [D + 1], memory-mapped: 0, then the end sequence of every document."""


def read_index(dataset_prefix: str) -> IndexFile:
    """Open `<dataset_prefix>.idx`; `ValueError` naming the file if it is not a valid index
    or does not match the size of its `.bin`."""
    path = dataset_prefix + ".idx"
    with open(path, "rb") as f:
        header = f.read(_HEADER_BYTES)
    if len(header) < _HEADER_BYTES or header[:len(INDEX_HEADER)] != INDEX_HEADER:
        raise ValueError(f"{path}: not a megatron-core index (expected the header {INDEX_HEADER!r})")
    version, code, num_sequences, num_doc_entries = struct.unpack("<QBQQ", header[len(INDEX_HEADER):])
    codes = {c: t for t, c in DTYPE_CODES.items()}
    if version != 1 or code not in codes or num_doc_entries < 1:
        raise ValueError(f"{path}: unsupported index (version {version}, dtype code {code}, "
                         f"{num_doc_entries} document entries); expected version 1 and a dtype code 1..8")
    expected = _HEADER_BYTES + num_sequences * 12 + num_doc_entries * 8
    if os.path.getsize(path) < expected:
        raise ValueError(f"{path}: truncated: {os.path.getsize(path)} bytes, expected at least {expected}")
    lengths = np.memmap(path, dtype="<i4", mode="r", offset=_HEADER_BYTES, shape=(num_sequences,)) \
        if num_sequences else np.zeros(0, np.int32)
    documents = np.memmap(path, dtype="<i8", mode="r", offset=_HEADER_BYTES + num_sequences * 12,
                          shape=(num_doc_entries,))
    index = IndexFile(path, np.dtype(codes[code]), lengths, documents)
    bin_size = os.path.getsize(dataset_prefix + ".bin")
    tokens = sum(int(piece.sum(dtype=np.int64)) for piece in _pieces(lengths))
    if bin_size != tokens * index.dtype.itemsize:
        raise ValueError(f"{dataset_prefix}.bin: {bin_size} bytes, but its .idx counts {tokens} tokens of "
                         f"{index.dtype.itemsize} bytes")
    return index


class _DocumentEnds:
    """A docs chunk given as a dataset's `document_indices` (ends) rather than as counts."""

    def __init__(self, ends: np.ndarray):
        self.ends = ends

    def __len__(self) -> int:
        return len(self.ends) - 1


def _pieces(array: np.ndarray):
    for start in range(0, len(array), PIECE):
        yield array[start:start + PIECE]


class DatasetWriter:
    """Appends shards in order to one `.bin`; writes `.idx` and `.ixt.npy` at `finalize`."""

    def __init__(self, bin_path: str, idx_path: str, side_path: str, dtype: type, roles_path: Optional[str] = None):
        self.bin_path, self.idx_path, self.side_path = bin_path, idx_path, side_path
        self.dtype = np.dtype(dtype)
        self._bin_fd = os.open(bin_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        # SFT datasets: the roles file grows with the .bin, one byte per token.
        self._roles_fd = os.open(roles_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if roles_path else -1
        self._lengths: list[np.ndarray] = []
        self._docs: list[np.ndarray] = []
        self._side: list[np.ndarray] = []
        self.num_tokens = 0
        self.num_sequences = 0
        self.num_documents = 0

    def append(self, shard: Shard) -> None:
        if shard.num_tokens:
            _append_file(self._bin_fd, shard.bin_path, shard.num_tokens * self.dtype.itemsize)
            if self._roles_fd >= 0:
                _append_file(self._roles_fd, shard.roles_path, shard.num_tokens)
        self._lengths.append(shard.sequence_lengths.astype(np.int32, copy=False))
        self._docs.append(shard.sequences_per_document.astype(np.int32, copy=False))
        self._side.append(shard.side.astype(np.int32, copy=False))
        self.num_tokens += shard.num_tokens
        self.num_sequences += len(shard.sequence_lengths)
        self.num_documents += len(shard.sequences_per_document)

    def append_dataset(self, dataset_prefix: str, side: Optional[np.ndarray] = None) -> None:
        """Append a finished dataset (`.bin`, `.idx` and its side file, or `side`). Only
        memory maps are kept; `finalize` streams them. `ValueError` naming the file when the
        dataset is not one this writer can append."""
        index = read_index(dataset_prefix)
        if index.dtype != self.dtype:
            raise ValueError(f"{index.path}: tokens are {index.dtype.name}, the merged dataset's {self.dtype.name}")
        if side is None:
            side = read_side_file(dataset_prefix)
        if len(side) != len(index.sequence_lengths):
            raise ValueError(f"{dataset_prefix}{SIDE_FILE_SUFFIX}: {len(side)} rows, not one per sequence of "
                             f"{index.path} ({len(index.sequence_lengths)})")
        if int(index.document_indices[0]) != 0 or int(index.document_indices[-1]) != len(index.sequence_lengths):
            raise ValueError(f"{index.path}: document indices do not span its {len(index.sequence_lengths)} sequences")
        tokens = sum(int(piece.sum(dtype=np.int64)) for piece in _pieces(index.sequence_lengths))
        if self._roles_fd >= 0 and os.path.getsize(dataset_prefix + ROLES_FILE_SUFFIX) != tokens:
            raise ValueError(f"{dataset_prefix}{ROLES_FILE_SUFFIX}: not one byte per token of {index.path} ({tokens})")
        if tokens:
            _append_file(self._bin_fd, dataset_prefix + ".bin", tokens * self.dtype.itemsize)
            if self._roles_fd >= 0:
                _append_file(self._roles_fd, dataset_prefix + ROLES_FILE_SUFFIX, tokens)
        self._lengths.append(index.sequence_lengths)
        self._docs.append(_DocumentEnds(index.document_indices))
        self._side.append(side)
        self.num_tokens += tokens
        self.num_sequences += len(index.sequence_lengths)
        self.num_documents += len(index.document_indices) - 1

    def finalize(self) -> None:
        self.close()
        write_index(self.idx_path, self.dtype, self._lengths, self._docs)
        write_side_file(self.side_path, self._side, self.num_sequences)

    def close(self) -> None:
        """Release the file handle without finishing (on errors)."""
        for name in ("_bin_fd", "_roles_fd"):
            if getattr(self, name) >= 0:
                os.close(getattr(self, name))
                setattr(self, name, -1)


def write_index(
    idx_path: str, dtype: np.dtype, length_chunks: list[np.ndarray], docs_chunks: list[np.ndarray]
) -> None:
    """Write an `.idx` from chunks of sequence lengths and of sequences-per-document
    (or `_DocumentEnds` of an appended dataset).

    Written in pieces, so no second full-size copy of the index is ever made, and chunks
    that are memory maps are never read whole.
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
            for piece in _pieces(chunk):
                f.write(np.ascontiguousarray(piece, dtype="<i4").tobytes())
        offset = np.int64(0)
        for chunk in length_chunks:
            for piece in _pieces(chunk):
                ends = np.cumsum(piece, dtype=np.int64) * itemsize + offset
                starts = np.empty_like(ends)
                starts[:1] = offset
                starts[1:] = ends[:-1]
                f.write(starts.astype("<i8").tobytes())
                if len(ends):
                    offset = ends[-1]
        f.write(np.zeros(1, dtype="<i8").tobytes())
        done = np.int64(0)
        for chunk in docs_chunks:
            if isinstance(chunk, _DocumentEnds):  # already cumulative: shift past what came before
                for piece in _pieces(chunk.ends[1:]):
                    f.write((piece.astype(np.int64) + done).astype("<i8").tobytes())
                done += np.int64(chunk.ends[-1])
                continue
            for piece in _pieces(chunk):
                ends = np.cumsum(piece, dtype=np.int64) + done
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
            for piece in _pieces(chunk):
                f.write(np.ascontiguousarray(piece, dtype="<i4").tobytes())


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


def read_metadata(dataset_prefix: str, missing_ok: bool = False) -> Optional[dict]:
    """The `.meta.json` of a preprocessed dataset (tokenizer, template, thresholds, counts):
    the one reader of that file.

    A dataset preprocessed by Megatron-LM's tool has none: then None with `missing_ok`
    (training and checkpoints treat such data as plain), else `InputError`. An unreadable
    or corrupt file is always an `InputError` naming it.
    """
    import json

    path = dataset_prefix + META_FILE_SUFFIX
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise InputError(f"{path}: no such file (is {dataset_prefix} the output of tools/preprocess_data.py?)") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read it: {error.strerror}") from None
    except ValueError as error:  # json.JSONDecodeError, UnicodeDecodeError
        raise InputError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def write_metadata(path: str, meta: dict) -> None:
    """Write a `.meta.json` (the one writer; `path` is the file, often a staged one)."""
    import json

    with open(path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


def read_roles(dataset_prefix: str) -> np.ndarray:
    """The roles file of an SFT dataset, memory-mapped: uint8, one per token of its `.bin`."""
    path = dataset_prefix + ROLES_FILE_SUFFIX
    return np.memmap(path, dtype=np.uint8, mode="r") if os.path.getsize(path) else np.zeros(0, np.uint8)
