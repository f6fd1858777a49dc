"""Reading documents for the critics: ids, the text critics judge, the input check.

A document is one JSON object per line in the IXT document format, which belongs to
``megatron_ixt.format`` (``format/document.py``, contract in ``docs/DEVELOPING.md``): the same
validator, the same error (``DocumentError``: file, line, field, what was expected), the
same rules for blank lines (rejected) and compressed input (``.gz``, ``.zst``) as
``tools/preprocess_data.py``. Besides ``text`` (required), ``id``, ``domain`` and
``feedback``, a document may carry keys that let a critic check it
(``data.document.CRITIC_KEYS``; ``docs/feedback.md`` lists them):

===================  ==========  ==========================================================
key                  type        meaning
===================  ==========  ==========================================================
``domain``           string      ``code``, ``math`` or ``prose`` (others allowed; ``auto``
                                 sends unknown domains to the text critic)
``language``         string      programming language of a ``code`` document (default
                                 ``python``)
``tests``            string      HumanEval-style test code defining ``check(candidate)``
``entry_point``      string      name of the function under test (required with ``tests``)
``fragment``         bool        the code is a piece of a larger file: names may be defined
                                 outside it, so undefined names are not held against it
``reference_answer`` str/number  the correct final answer of a ``math`` document
===================  ==========  ==========================================================
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from megatron_ixt.format.conversation import parse_conversation_line
from megatron_ixt.format.document import DocumentSpec, parse_document_line
from megatron_ixt.format.errors import DocumentError
from megatron_ixt.format.sources import iter_lines

DOMAIN_CODE = "code"
DOMAIN_MATH = "math"
DOMAIN_PROSE = "prose"

_SPEC = DocumentSpec()


@dataclass
class SourceDocument:
    """A parsed input document and where it came from."""

    doc: dict[str, Any]
    path: str
    line: int

    @property
    def key(self) -> str:
        """The id as a string that keeps ``1`` and ``"1"`` apart (used to match resumed ids)."""
        return id_key(self.doc["id"])


def id_key(doc_id: Any) -> str:
    """Canonical string of a document id (JSON text, so ``1`` != ``"1"``)."""
    return json.dumps(doc_id, ensure_ascii=False)


CONVERSATION_KEY = "_conversation"
"""Where a conversation's whole transcript travels to the critics (the LLM judge reads it)."""


def judged_text(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as critics see it: a list-of-strings ``text`` joined by blank lines; for
    a conversation (SFT, ``format/conversation.py``) its assistant turns as ``text`` (what
    the python, math and text critics check) and the whole transcript under
    :data:`CONVERSATION_KEY` (what the LLM judge reads)."""
    if "messages" in doc and "text" not in doc:
        from megatron_ixt.format.conversation import assistant_text, transcript, validate_conversation

        conversation = validate_conversation(doc)
        return {**doc, "text": assistant_text(conversation), CONVERSATION_KEY: transcript(conversation)}
    if isinstance(doc["text"], list):
        return {**doc, "text": "\n\n".join(doc["text"])}
    return doc


def default_id(path: str, line: int) -> str:
    """The id given to a document that has none: ``<file name>:<line>``.

    Only the base name is used so that the id stays the same when the file moves; two
    inputs with the same base name and no ids therefore collide, which the duplicate-id
    check reports.
    """
    return f"{os.path.basename(path)}:{line}"


def iter_documents(paths: Iterable[str | os.PathLike]) -> Iterator[SourceDocument]:
    """Parse and validate every line of the JSONL files, in order; give ids to those without.

    Raises ``DocumentError`` at the first bad line, ``InputError`` for a file that cannot
    be read (both ``megatron_ixt.format.errors.DataError``).
    """
    for path in paths:
        path = os.fspath(path)
        for line_number, raw in iter_lines(path):
            if b'"messages"' in raw and b'"text"' not in raw:  # a conversation (SFT data)
                doc = parse_conversation_line(raw, path, line_number).obj
            else:
                doc = parse_document_line(raw, _SPEC, path, line_number).obj
            if doc.get("id") is None:  # id first, as in documents that have one
                doc = {"id": default_id(path, line_number), **{k: v for k, v in doc.items() if k != "id"}}
            yield SourceDocument(doc, path, line_number)


def check_inputs(paths: Iterable[str | os.PathLike]) -> int:
    """Validate all input files and check that ids are unique; return the document count.

    Run before anything is written, so that a bad line 90,000 does not leave a
    half-written output behind.
    """
    seen: dict[str, tuple[str, int]] = {}
    count = 0
    for source in iter_documents(paths):
        key = source.key
        if key in seen:
            first_path, first_line = seen[key]
            raise DocumentError(source.path, source.line, "id", "an id not used before (ids must be unique "
                                "for resuming to work)", detail=f"duplicate id {source.doc['id']!r}, first at "
                                f"{first_path}:{first_line}")
        seen[key] = (source.path, source.line)
        count += 1
    return count
