"""The IXT document format: one JSON object per line, validated line by line.

The format is specified in docs/DEVELOPING.md ("Document") and, machine-readably, in
`document.schema.json` next to this module. Example:

    {"id": "humaneval/0", "domain": "code", "text": "def f(x):\\n    return x\\n",
     "feedback": {"score": 7.5, "scale": [0, 10],
                  "axes": {"writing_style": 7, "expertise": 8, "educational_value": 6,
                           "factual_accuracy": 9, "efficiency": 7},
                  "critique": "Correct and idiomatic; no docstring.",
                  "judge": "python-verifier/1"}}

The validator here is hand-written rather than a generic JSON Schema engine because it runs
once per input line inside the preprocessing workers (it must cost microseconds) and
because its errors must name the field and what was expected in words a person can act on.
A test keeps it and the schema file in agreement.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from megatron_ixt.format.errors import DocumentError, FieldError

SCHEMA_PATH = Path(__file__).with_name("document.schema.json")
"""The JSON Schema (draft 2020-12) of one document line."""

STANDARD_AXES = ("writing_style", "expertise", "educational_value", "factual_accuracy", "efficiency")
"""The five critique axes of the IXT paper, in display order."""

DEFAULT_SCORE_SCALE = (0.0, 10.0)
"""Scale assumed for `feedback.score` when a document does not declare `feedback.scale`."""

Number = Union[int, float]


def _is_number(value: Any) -> bool:
    # bool is a subclass of int: `true` is not a score.
    return type(value) in (int, float) and math.isfinite(value)


def _check_score(value: Any, field_name: str, low: float, high: float) -> None:
    """A score or an axis score of the data: a number within the scale `[low, high]`."""
    if not _is_number(value):
        raise FieldError(field_name, "a number", value)
    if not low <= value <= high:
        raise FieldError(field_name, f"a number within the scale [{low:g}, {high:g}]", value)


def validate_scale(value: Any, field_name: str = "feedback.scale") -> tuple[float, float]:
    """Check a `[min, max]` pair of finite numbers with min < max and return it as floats."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(_is_number(v) for v in value)
        or not value[0] < value[1]
    ):
        raise FieldError(field_name, "[min, max]: two finite numbers with min < max", value)
    return float(value[0]), float(value[1])


@dataclass(frozen=True)
class Feedback:
    """Critique feedback on one document: the `feedback` object of the format, and the verdict
    every critic of `megatron_ixt.feedback` returns (one class for both).

    `score` may be None only for feedback built by hand for rendering (for example a
    "desired critique" at evaluation time); feedback read from data always has a score.
    `reasoning` is a judge's private reasoning (thinking models only): it is not part of the
    format, `to_record` leaves it out, and it takes no part in comparisons.
    """

    score: Optional[float]
    scale: tuple[float, float] = DEFAULT_SCORE_SCALE
    axes: Mapping[str, float] = field(default_factory=dict)
    critique: Optional[str] = None
    judge: Optional[str] = None
    reasoning: Optional[str] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Checked here too (not only in from_dict) so that a critic cannot build a verdict
        # that the data tools would reject; from_dict has already named the field for data.
        low, high = self.scale
        if self.score is not None and not (_is_number(self.score) and low <= self.score <= high):
            raise FieldError("feedback.score", f"a finite number within the scale [{low:g}, {high:g}]", self.score)
        for name, value in self.axes.items():
            if not (_is_number(value) and low <= value <= high):
                raise FieldError(f"feedback.axes.{name}", f"a number within the scale [{low:g}, {high:g}]", value)

    @classmethod
    def from_dict(
        cls,
        obj: Any,
        default_scale: Sequence[Number] = DEFAULT_SCORE_SCALE,
        prefix: str = "feedback",
        require_score: bool = True,
    ) -> "Feedback":
        """Validate a parsed `feedback` object; raise `FieldError` naming the bad field."""
        if not isinstance(obj, dict):
            raise FieldError(prefix, "an object with at least a numeric 'score'", obj)
        if "scale" in obj:
            scale = validate_scale(obj["scale"], f"{prefix}.scale")
        else:
            scale = (float(default_scale[0]), float(default_scale[1]))
        low, high = scale

        score = obj.get("score")
        if "score" in obj or require_score:
            if "score" not in obj:
                raise FieldError(f"{prefix}.score", "a number (the key 'score' is missing)")
            _check_score(score, f"{prefix}.score", low, high)

        axes = obj.get("axes")
        if axes is None:
            axes = {}
        if not isinstance(axes, dict):
            raise FieldError(f"{prefix}.axes", "an object mapping axis names to scores", axes)
        for name, value in axes.items():
            _check_score(value, f"{prefix}.axes.{name}", low, high)

        critique = obj.get("critique")
        if critique is not None and not isinstance(critique, str):
            raise FieldError(f"{prefix}.critique", "a string", critique)
        judge = obj.get("judge")
        if judge is not None and not isinstance(judge, str):
            raise FieldError(f"{prefix}.judge", "a string", judge)
        return cls(
            score=None if score is None else float(score),
            scale=scale,
            axes={k: float(v) for k, v in axes.items()},
            critique=critique,
            judge=judge,
        )

    def normalized_score(self) -> float:
        """The score mapped onto [0, 1] by its scale."""
        if self.score is None:
            raise ValueError("this feedback has no score")
        low, high = self.scale
        return (self.score - low) / (high - low)

    @property
    def level(self) -> int:
        """The fixed-threshold quality level 1..5 (`levels.quality_level`)."""
        from megatron_ixt.format.levels import quality_level

        if self.score is None:
            raise ValueError("this feedback has no score")
        return quality_level(self.score, self.scale)

    def to_record(self) -> dict[str, Any]:
        """The JSON object stored under a document's `feedback` key (`reasoning` left out)."""
        record: dict[str, Any] = {"score": _round(self.score), "scale": [_round(v) for v in self.scale]}
        # Standard axes first, in display order, so that records diff cleanly.
        names = [a for a in STANDARD_AXES if a in self.axes] + sorted(a for a in self.axes if a not in STANDARD_AXES)
        if names:
            record["axes"] = {name: _round(self.axes[name]) for name in names}
        if self.critique is not None:
            record["critique"] = self.critique
        if self.judge is not None:
            record["judge"] = self.judge
        return record


def _round(value: Optional[float]) -> Union[float, int, None]:
    """Two decimals, and integers written as integers (`10` rather than `10.0`)."""
    if value is None:
        return None
    value = round(float(value), 2)
    return int(value) if value.is_integer() else value


@dataclass(frozen=True)
class DocumentSpec:
    """What a valid line must contain: the text keys, the feedback key, the default scale."""

    json_keys: tuple[str, ...] = ("text",)
    feedback_key: str = "feedback"
    default_scale: tuple[float, float] = DEFAULT_SCORE_SCALE


@dataclass(frozen=True)
class Document:
    """One validated input line."""

    texts: dict[str, Union[str, list[str]]]
    """Per json key: a string (one sequence) or a list of strings (one sequence each)."""
    feedback: Optional[Feedback] = None
    id: Optional[Union[str, int]] = None
    domain: Optional[str] = None
    obj: Optional[dict] = field(default=None, compare=False, repr=False)
    """The parsed line itself, with any other keys (critics read them; see `CRITIC_KEYS`)."""


CRITIC_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "language": ((str,), "a string"),
    "tests": ((str,), "a string of test code"),
    "entry_point": ((str,), "a function name"),
    "fragment": ((bool,), "true or false"),
    "reference_answer": ((str, int, float), "a string or a number"),
}
"""Optional keys that let a critic check a document (docs/feedback.md): key -> (types, expected)."""


def validate_line_keys(obj: dict) -> tuple[Optional[Union[str, int]], Optional[str]]:
    """The keys every line may carry besides its text (documents and SFT conversations alike):
    ``id``, ``domain`` and the critics' keys; returns (id, domain), raises ``FieldError``."""
    doc_id = obj.get("id")
    if doc_id is not None and type(doc_id) not in (str, int):
        raise FieldError("id", "a string or an integer", doc_id)
    domain = obj.get("domain")
    if domain is not None and not isinstance(domain, str):
        raise FieldError("domain", "a string", domain)
    for key, (types, expected) in CRITIC_KEYS.items():
        value = obj.get(key)
        if value is not None and type(value) not in types:
            raise FieldError(key, expected, value)
    if obj.get("tests") is not None and not obj.get("entry_point"):
        raise FieldError("entry_point", "the name of the function under test (the key is missing; "
                         "a document with 'tests' needs one)")
    return doc_id, domain


def validate_document(obj: Any, spec: DocumentSpec = DocumentSpec()) -> Document:
    """Validate a parsed JSON line against the document format; raise `FieldError`."""
    if not isinstance(obj, dict):
        raise FieldError(None, "a JSON object per line", obj)
    texts = {}
    for key in spec.json_keys:
        if key not in obj:
            raise FieldError(key, f"a string (the key '{key}' is missing)")
        value = obj[key]
        if isinstance(value, list):
            for i, element in enumerate(value):
                if not isinstance(element, str):
                    raise FieldError(f"{key}[{i}]", "a string", element)
        elif not isinstance(value, str):
            raise FieldError(key, "a string or a list of strings", value)
        texts[key] = value

    doc_id, domain = validate_line_keys(obj)
    raw_feedback = obj.get(spec.feedback_key)
    # `"feedback": null` is accepted as "not annotated": annotation pipelines often write
    # the key for every document and fill it for a targeted subset only.
    feedback = (
        None
        if raw_feedback is None
        else Feedback.from_dict(raw_feedback, spec.default_scale, prefix=spec.feedback_key)
    )
    return Document(texts=texts, feedback=feedback, id=doc_id, domain=domain, obj=obj)


def parse_document_line(
    raw: bytes, spec: DocumentSpec = DocumentSpec(), path: str = "<input>", line: Optional[int] = None
) -> Document:
    """Decode, parse and validate one raw input line; raise `DocumentError` with its location."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DocumentError(
            path, line, None, "UTF-8 text", detail=f"invalid byte at offset {error.start} of the line"
        ) from None
    if not text or text.isspace():
        raise DocumentError(path, line, None, "a JSON object, got a blank line")
    try:
        obj = _parse_json(text)
    except json.JSONDecodeError as error:
        raise DocumentError(
            path, line, None, "a JSON object", detail=f"malformed JSON: {error.msg} at column {error.colno}"
        ) from None
    try:
        document = validate_document(obj, spec)
        # JSON escapes can smuggle in lone surrogates ("\ud800") that no tokenizer can encode;
        # they can only come from an escape, so the (rare) check runs only when one is present.
        if "\\u" in text:
            _check_encodable(document, spec.feedback_key)
        return document
    except FieldError as error:
        raise DocumentError.from_field_error(error, path, line) from None


_DECODER = json.JSONDecoder()


def _parse_json(text: str) -> Any:
    # json.loads runs two whitespace regexes around the C scanner; a JSONL line rarely has
    # leading whitespace, so call the scanner directly and only check what follows it.
    # Same result and same errors as json.loads, a few microseconds less per line.
    try:
        obj, end = _DECODER.raw_decode(text)
    except json.JSONDecodeError:
        return json.loads(text)  # leading whitespace, or a real error with json's message
    if end != len(text) and not text[end:].isspace():
        return json.loads(text)  # raises "Extra data"
    return obj


def _check_encodable(document: Document, feedback_key: str) -> None:
    for key, value in document.texts.items():
        for i, element in enumerate([value] if isinstance(value, str) else value):
            try:
                element.encode("utf-8")
            except UnicodeEncodeError:
                name = key if isinstance(value, str) else f"{key}[{i}]"
                raise FieldError(name, "text encodable as UTF-8", detail="it contains an unpaired surrogate escape")
    critique = document.feedback.critique if document.feedback else None
    if critique is not None:
        try:
            critique.encode("utf-8")
        except UnicodeEncodeError:
            raise FieldError(f"{feedback_key}.critique", "text encodable as UTF-8", detail="it contains an unpaired surrogate escape")


def load_schema() -> dict:
    """The JSON Schema of a document line, as a dict."""
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)
