"""Errors raised by the data package, written for people.

Every error that a user can cause with bad input names *where* (file, line, field) and
*what was expected*, so that a message such as

    data/part-3.jsonl:1207: field 'feedback.score': expected a number within the scale
    [0, 10], got 12 (int)

is enough to find and fix the line. The command-line tools catch `DataError`, print its
message without a traceback and exit non-zero.
"""

from __future__ import annotations

from typing import Any, Optional


class DataError(Exception):
    """Base class of the errors that the data tools report to the user without a traceback."""


class FieldError(DataError, ValueError):
    """A value that does not match the document format, without file and line.

    Raised by the validators in `megatron_ixt.format.document`; `DocumentError` adds the
    location. Evaluation code that validates a hand-written feedback dict sees this one.
    """

    def __init__(self, field: Optional[str], expected: str, got: Any = ..., *, detail: str = ""):
        self.field = field
        self.expected = expected
        self.got = got
        self.detail = detail
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = f"field '{self.field}': " if self.field else ""
        got = "" if self.got is ... else f", got {describe_value(self.got)}"
        detail = f" ({self.detail})" if self.detail else ""
        return f"{where}expected {self.expected}{got}{detail}"


class DocumentError(FieldError):
    """A bad input line: `FieldError` plus the file and the 1-based line number."""

    def __init__(
        self,
        path: str,
        line: Optional[int],
        field: Optional[str],
        expected: str,
        got: Any = ...,
        *,
        detail: str = "",
    ):
        self.path = path
        self.line = line
        super().__init__(field, expected, got, detail=detail)

    @classmethod
    def from_field_error(cls, error: FieldError, path: str, line: Optional[int]) -> "DocumentError":
        return cls(path, line, error.field, error.expected, error.got, detail=error.detail)

    def _describe(self) -> str:
        location = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{location}: {super()._describe()}"

    def to_dict(self) -> dict:
        """A JSON-friendly record, as listed under `skipped` in the `.meta.json`."""
        return {
            "file": self.path,
            "line": self.line,
            "field": self.field,
            "error": FieldError._describe(self),
        }


class InputError(DataError):
    """A problem with an input file as a whole: missing, unreadable, corrupt, empty."""


class TokenizerError(DataError):
    """A tokenizer that cannot be loaded, or that cannot represent the feedback delimiters."""


class OutputError(DataError):
    """The output location cannot be written."""


def describe_value(value: Any, limit: int = 60) -> str:
    """`12 (int)`, `'abc' (str)`, `None`: short enough for an error line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (bool)"
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    kind = {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)
    return f"{text} ({kind})"
