"""CPython's standard library as code documents.

Source: the ``.py`` files of the running interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``; PSF-2.0), test directories left out. A module is
cut into documents at top-level statement boundaries, so every document parses on its own;
a document cut from a larger module is marked ``fragment: true`` (names it uses may be
defined in another piece, and the python critic does not hold that against it). A single
statement longer than ``max_chars * 3`` (a few huge classes) is left out rather than cut
into pieces that would not parse.
"""

from __future__ import annotations

import ast
import logging
import random
import sysconfig
from pathlib import Path
from typing import Any, Iterator

from megatron_ixt.feedback.documents import DOMAIN_CODE

logger = logging.getLogger(__name__)

EXCLUDED_PARTS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The standard library's ``.py`` files outside test directories, sorted."""
    root = root or stdlib_root()
    return sorted(path for path in root.rglob("*.py")
                  if not EXCLUDED_PARTS.intersection(path.relative_to(root).parts))


def chunk_module(source: str, max_chars: int) -> list[tuple[int, int, str]]:
    """Cut a module into ``(first_line, last_line, text)`` pieces of about ``max_chars``.

    Cuts fall between top-level statements; comments between two statements go with the
    statement after them. Raises SyntaxError for a module that does not parse.
    """
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    if sum(map(len, lines)) <= max_chars or not tree.body:
        return [(1, len(lines), source)] if source.strip() else []
    # Segment boundaries: line index (0-based) where each top-level statement's block begins.
    starts = [0]
    for previous in tree.body[:-1]:
        starts.append(previous.end_lineno)  # the line after the previous statement ends
    segments = [(starts[i], starts[i + 1] if i + 1 < len(starts) else len(lines)) for i in range(len(starts))]
    pieces: list[tuple[int, int, str]] = []
    current_start, current_end, size = None, None, 0
    for start, end in segments:
        length = sum(len(line) for line in lines[start:end])
        if current_start is not None and size + length > max_chars:
            pieces.append((current_start, current_end, "".join(lines[current_start:current_end])))
            current_start = None
        if current_start is None:
            current_start, size = start, 0
        current_end, size = end, size + length
    if current_start is not None:
        pieces.append((current_start, current_end, "".join(lines[current_start:current_end])))
    # A scrap of a few lines (left between two big statements) joins the piece before it.
    merged: list[tuple[int, int, str]] = []
    for start, end, text in pieces:
        if merged and len(text) < max_chars // 20:
            first, _, previous = merged.pop()
            merged.append((first, end, previous + text))
        else:
            merged.append((start, end, text))
    return [(start + 1, end, text) for start, end, text in merged
            if text.strip() and len(text) <= 3 * max_chars]


def stdlib_documents(rng: random.Random, limit: int, max_chars: int = 6000) -> Iterator[dict[str, Any]]:
    """Up to ``limit`` documents from standard-library modules taken in a seeded order."""
    root = stdlib_root()
    files = stdlib_files(root)
    rng.shuffle(files)
    produced = 0
    for path in files:
        if produced >= limit:
            return
        # A few files are not UTF-8; replacement characters keep them usable.
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            pieces = chunk_module(source, max_chars)
        except (SyntaxError, ValueError):
            logger.debug("skipping %s: does not parse", path)
            continue
        relative = path.relative_to(root).as_posix()
        whole_module = len(pieces) == 1 and pieces[0][2] == source
        for first, last, text in pieces:
            if produced >= limit:
                return
            produced += 1
            yield {"id": f"stdlib/{relative}:{first}-{last}", "domain": DOMAIN_CODE,
                   "language": "python", "text": text, "fragment": not whole_module,
                   "source": "cpython-stdlib", "variant": "reference"}
