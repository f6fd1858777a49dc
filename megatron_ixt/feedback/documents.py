"""Reading documents: the JSONL format, the keys that tell critics what a document is, ids.

A document is one JSON object per line (contract in ``docs/DEVELOPING.md``). Besides
``text`` (required), ``id``, ``domain`` and ``feedback``, a document may carry keys that
let a critic check it (``docs/feedback.md`` lists them):

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

Every problem with an input line raises :class:`InputError`, which names the file, the
line and the field, so that a person can fix the line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

DOMAIN_CODE = "code"
DOMAIN_MATH = "math"
DOMAIN_PROSE = "prose"

# key -> (accepted types, description used in error messages)
_OPTIONAL_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "domain": ((str,), "a string"),
    "language": ((str,), "a string"),
    "tests": ((str,), "a string of test code"),
    "entry_point": ((str,), "a function name"),
    "fragment": ((bool,), "true or false"),
    "reference_answer": ((str, int, float), "a string or a number"),
}


class InputError(Exception):
    """A bad input line; ``str(error)`` reads ``path:line: field "x": what is wrong``."""

    def __init__(self, path: str, line: int, message: str, field: str | None = None):
        self.path, self.line, self.field = path, line, field
        where = f"{path}:{line}: "
        what = f'field "{field}": ' if field else ""
        super().__init__(where + what + message)


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


def judged_text(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as critics see it: a list-of-strings ``text`` joined by blank lines."""
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


def validate_document(doc: Any, path: str, line: int) -> dict[str, Any]:
    """Check one parsed line against the contract; return it (with an id assigned)."""
    if not isinstance(doc, dict):
        raise InputError(path, line, f"expected a JSON object, got {type(doc).__name__}")
    if "text" not in doc:
        raise InputError(path, line, "missing (every document needs a text string)", "text")
    text = doc["text"]
    # A list of strings is allowed too, as in Megatron-LM's preprocess_data.py (one sequence
    # per element); critics read it joined (see judged_text).
    if not (isinstance(text, str) or isinstance(text, list) and all(isinstance(t, str) for t in text)):
        raise InputError(path, line, f"expected a string or a list of strings, got {type(text).__name__}",
                         "text")
    if "id" in doc:
        doc_id = doc["id"]
        if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
            raise InputError(path, line, f"expected a string or an integer, got {doc_id!r}", "id")
    else:
        doc = {"id": default_id(path, line), **doc}  # id first, as in documents that have one
    for key, (types, description) in _OPTIONAL_KEYS.items():
        value = doc.get(key)
        if value is None:
            continue
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise InputError(path, line, f"expected {description}, got {value!r}", key)
    if "tests" in doc and not doc.get("entry_point"):
        raise InputError(path, line, "missing (a document with tests must name the function "
                         "under test)", "entry_point")
    feedback = doc.get("feedback")
    if feedback is not None:
        if not isinstance(feedback, dict):
            raise InputError(path, line, "expected a JSON object", "feedback")
        score = feedback.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise InputError(path, line, f"expected a number, got {score!r}", "feedback.score")
    return doc


def iter_documents(paths: Iterable[str | os.PathLike]) -> Iterator[SourceDocument]:
    """Parse and validate every non-blank line of the JSONL files, in order.

    Raises :class:`InputError` at the first bad line.
    """
    for path in paths:
        path = os.fspath(path)
        try:
            handle = open(path, "rb")
        except OSError as error:
            raise InputError(path, 0, f"cannot open: {error.strerror}") from None
        with handle:
            for line_number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue  # blank lines are tolerated, as in most JSONL readers
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise InputError(path, line_number, f"not UTF-8 (byte {error.start})") from None
                try:
                    doc = json.loads(text.rstrip("\r\n"))  # so columns count within the line
                except json.JSONDecodeError as error:
                    raise InputError(path, line_number,
                                     f"malformed JSON: {error.msg} (column {error.colno})") from None
                yield SourceDocument(validate_document(doc, path, line_number), path, line_number)


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
            raise InputError(source.path, source.line,
                             f"duplicate id {source.doc['id']!r} (first at {first_path}:{first_line}); "
                             "ids must be unique for resuming to work", "id")
        seen[key] = (source.path, source.line)
        count += 1
    return count
