"""Reading JSONL input: many files, globs, `.gz` and `.zst`, streamed in batches of raw lines.

Lines stay raw `bytes` here: decoding, JSON parsing and validation happen in the worker
processes (`encode.py`), so the main process only reads and forwards batches. A batch never
spans two files, so that a worker can name the file and line of every document it rejects.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Sequence, Union

from megatron_ixt.format.errors import InputError


def expand_inputs(spec: Union[str, Sequence[str]]) -> list[str]:
    """Expand `--input`: a file, a glob (`data/*.jsonl.zst`) or a comma-separated list of those.

    Globs are sorted so that the output order does not depend on the filesystem. Raises
    `InputError` when a name matches nothing or is a folder.
    """
    patterns = [spec] if isinstance(spec, str) else list(spec)
    patterns = [p.strip() for item in patterns for p in item.split(",") if p.strip()]
    if not patterns:
        raise InputError("no input given")
    paths: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(m for m in glob.glob(pattern) if os.path.isfile(m))
            if not matches:
                raise InputError(f"{pattern}: no input file matches this pattern")
            paths.extend(matches)
        elif os.path.isdir(pattern):
            raise InputError(f"{pattern}: is a folder; give a glob such as {os.path.join(pattern, '*.jsonl')}")
        elif not os.path.isfile(pattern):
            raise InputError(f"{pattern}: no such input file")
        else:
            paths.append(pattern)
    unreadable = [p for p in paths if not os.access(p, os.R_OK)]
    if unreadable:
        raise InputError(f"{unreadable[0]}: input file is not readable (permission denied)")
    return paths


class _InputStream:
    """A decompressing binary line reader that knows how far into the file on disk it is."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._raw = open(path, "rb")
        except OSError as error:
            raise InputError(f"{path}: cannot open input: {error.strerror}") from None
        if path.endswith(".gz"):
            self.reader: BinaryIO = gzip.GzipFile(fileobj=self._raw, mode="rb")
        elif path.endswith(".zst"):
            try:
                import zstandard
            except ImportError:
                raise InputError(f"{path}: reading .zst input needs the 'zstandard' package") from None
            self.reader = io.BufferedReader(
                zstandard.ZstdDecompressor().stream_reader(self._raw), buffer_size=1 << 20
            )
        else:
            self.reader = io.BufferedReader(self._raw, buffer_size=1 << 20)

    def compressed_position(self) -> int:
        """Bytes of the file on disk consumed so far (for progress and the ETA)."""
        return self._raw.tell()

    def close(self) -> None:
        self.reader.close()
        self._raw.close()


@dataclass
class LineBatch:
    """Consecutive raw lines of one input file."""

    path: str
    first_line: int
    """1-based line number of `lines[0]` in `path`."""
    lines: list[bytes]
    nbytes: int
    """Uncompressed bytes of `lines` (for MB/s)."""
    index: int = 0
    """Position of the batch in the whole input (0, 1, 2, ...): the merge order."""


class LineBatchReader:
    """Iterates over `LineBatch`es of all input files in order; tracks progress on disk."""

    def __init__(self, paths: Sequence[str], max_lines: int = 1024, max_bytes: int = 4 << 20):
        self.paths = list(paths)
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.total_disk_bytes = sum(os.path.getsize(p) for p in self.paths)
        self.lines_read = 0
        self._finished_disk_bytes = 0
        self._current: _InputStream | None = None

    def disk_bytes_done(self) -> int:
        current = self._current.compressed_position() if self._current else 0
        return self._finished_disk_bytes + current

    def __iter__(self) -> Iterator[LineBatch]:
        index = 0
        for path in self.paths:
            for batch in self._batches_of(path):
                batch.index = index
                index += 1
                yield batch

    def _batches_of(self, path: str) -> Iterator[LineBatch]:
        stream = _InputStream(path)
        self._current = stream
        try:
            lines: list[bytes] = []
            nbytes = 0
            first = 1
            line_no = 0
            for line_no, line in enumerate(_read_lines(stream), start=1):
                lines.append(line)
                nbytes += len(line)
                if len(lines) >= self.max_lines or nbytes >= self.max_bytes:
                    yield LineBatch(path, first, lines, nbytes)
                    self.lines_read += len(lines)
                    lines, nbytes, first = [], 0, line_no + 1
            if lines:
                yield LineBatch(path, first, lines, nbytes)
                self.lines_read += len(lines)
        finally:
            self._finished_disk_bytes += os.path.getsize(path)
            self._current = None
            stream.close()


def iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """`(line number, raw line)` of one input file, decompressed (`.gz`, `.zst`) as for the
    preprocessing tool; for readers that go through a file line by line (feedback annotation)."""
    stream = _InputStream(path)
    try:
        yield from enumerate(_read_lines(stream), start=1)
    finally:
        stream.close()


def _read_lines(stream: _InputStream) -> Iterator[bytes]:
    # Decompression errors surface while reading; name the file instead of a bare traceback.
    import zlib

    errors: tuple = (OSError, EOFError, zlib.error)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    try:
        yield from stream.reader
    except errors as error:
        raise InputError(f"{stream.path}: cannot read input: {error}") from None
