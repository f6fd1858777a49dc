"""The document format: validator messages and agreement with document.schema.json."""

from __future__ import annotations

import json

import pytest

from megatron_ixt.format.document import (
    STANDARD_AXES,
    DocumentSpec,
    CRITIC_KEYS,
    Feedback,
    load_schema,
    parse_document_line,
    validate_document,
)
from megatron_ixt.format.errors import DocumentError, FieldError

EXAMPLE = {
    "id": "humaneval/0", "domain": "code", "text": "def f(x):\n    return x\n",
    "feedback": {"score": 7.5, "scale": [0, 10],
                 "axes": {"writing_style": 7, "expertise": 8, "educational_value": 6,
                          "factual_accuracy": 9, "efficiency": 7},
                 "critique": "Correct and idiomatic; no docstring.", "judge": "python-verifier/1"},
}


def parse(obj_or_raw, spec=DocumentSpec()):
    raw = obj_or_raw if isinstance(obj_or_raw, bytes) else json.dumps(obj_or_raw).encode()
    return parse_document_line(raw, spec, "corpus.jsonl", 12)


def test_contract_example_is_valid():
    doc = parse(EXAMPLE)
    assert doc.texts == {"text": EXAMPLE["text"]}
    assert doc.id == "humaneval/0" and doc.domain == "code"
    assert doc.feedback.score == 7.5 and doc.feedback.scale == (0.0, 10.0)
    assert list(doc.feedback.axes) == list(STANDARD_AXES)
    assert doc.feedback.critique.startswith("Correct") and doc.feedback.judge == "python-verifier/1"
    assert doc.feedback.normalized_score() == pytest.approx(0.75)


def test_minimal_and_optional_forms():
    assert parse({"text": ""}).feedback is None
    assert parse({"text": "x", "feedback": None}).feedback is None  # null = not annotated
    assert parse({"text": ["a", "b"]}).texts == {"text": ["a", "b"]}
    assert parse({"text": "x", "id": 3}).id == 3
    # Without its own scale, the score is read on the default scale (--score-scale).
    doc = parse({"text": "x", "feedback": {"score": 80}}, DocumentSpec(default_scale=(0, 100)))
    assert doc.feedback.scale == (0.0, 100.0)


@pytest.mark.parametrize(
    "raw, field, expected",
    [
        (b'{"text": "a"', None, "malformed JSON"),
        (b"\n", None, "blank line"),
        (b"   \r\n", None, "blank line"),
        (b'["text"]', None, "a JSON object per line"),
        (b'{"text": "a"} {"text": "b"}', None, "Extra data"),
        (b'{"txt": "a"}', "text", "key 'text' is missing"),
        (b'{"text": 5}', "text", "a string or a list of strings"),
        (b'{"text": null}', "text", "a string or a list of strings"),
        (b'{"text": ["a", 3]}', "text[1]", "a string"),
        (b'{"text": "caf\xe9"}', None, "UTF-8"),
        (b'{"text": "\\ud800"}', "text", "unpaired surrogate"),
        (b'{"text": "a", "id": 1.5}', "id", "a string or an integer"),
        (b'{"text": "a", "id": true}', "id", "a string or an integer"),
        (b'{"text": "a", "domain": 1}', "domain", "a string"),
        (b'{"text": "a", "feedback": 7}', "feedback", "an object"),
        (b'{"text": "a", "feedback": {}}', "feedback.score", "a number"),
        (b'{"text": "a", "feedback": {"score": "7"}}', "feedback.score", "a number"),
        (b'{"text": "a", "feedback": {"score": true}}', "feedback.score", "a number"),
        (b'{"text": "a", "feedback": {"score": NaN}}', "feedback.score", "a number"),
        (b'{"text": "a", "feedback": {"score": 12}}', "feedback.score", "within the scale [0, 10]"),
        (b'{"text": "a", "feedback": {"score": -1}}', "feedback.score", "within the scale [0, 10]"),
        (b'{"text": "a", "feedback": {"score": 3, "scale": [5, 1]}}', "feedback.scale", "min < max"),
        (b'{"text": "a", "feedback": {"score": 3, "scale": [0]}}', "feedback.scale", "[min, max]"),
        (b'{"text": "a", "feedback": {"score": 3, "axes": [1, 2]}}', "feedback.axes", "an object"),
        (b'{"text": "a", "feedback": {"score": 3, "axes": {"expertise": "high"}}}', "feedback.axes.expertise", "a number"),
        (b'{"text": "a", "feedback": {"score": 3, "axes": {"expertise": 11}}}', "feedback.axes.expertise", "within the scale"),
        (b'{"text": "a", "feedback": {"score": 3, "critique": ["x"]}}', "feedback.critique", "a string"),
        (b'{"text": "a", "feedback": {"score": 3, "judge": 1}}', "feedback.judge", "a string"),
    ],
)
def test_errors_name_file_line_field_and_expectation(raw, field, expected):
    with pytest.raises(DocumentError) as info:
        parse(raw)
    error = info.value
    assert (error.path, error.line, error.field) == ("corpus.jsonl", 12, field)
    message = str(error)
    assert message.startswith("corpus.jsonl:12: ")
    assert expected in message
    if field:
        assert f"field '{field}'" in message
    assert error.to_dict()["line"] == 12


def test_errors_show_what_was_found():
    with pytest.raises(DocumentError, match=r"got 12 \(int\)"):
        parse({"text": "a", "feedback": {"score": 12}})
    with pytest.raises(DocumentError, match=r"got 5 \(int\)"):
        parse({"text": 5})


def test_custom_keys():
    spec = DocumentSpec(json_keys=("question", "answer"), feedback_key="critic")
    doc = parse({"question": "q", "answer": ["a1", "a2"], "critic": {"score": 1}}, spec)
    assert doc.texts == {"question": "q", "answer": ["a1", "a2"]} and doc.feedback.score == 1
    with pytest.raises(DocumentError, match="field 'answer'"):
        parse({"question": "q"}, spec)
    with pytest.raises(DocumentError, match="field 'critic.score'"):
        parse({"question": "q", "answer": "a", "critic": {"score": 99}}, spec)


def test_feedback_from_dict_for_hand_written_feedback():
    assert Feedback.from_dict({"critique": "Great."}, require_score=False).score is None
    with pytest.raises(FieldError, match="feedback.score"):
        Feedback.from_dict({"critique": "Great."})


def test_schema_matches_validator():
    schema = load_schema()
    assert schema["required"] == ["text"]
    assert set(schema["properties"]) == {"id", "domain", "text", "feedback", *CRITIC_KEYS}
    feedback = schema["$defs"]["feedback"]
    assert feedback["required"] == ["score"]
    assert set(feedback["properties"]) == {"score", "scale", "axes", "critique", "judge"}
    assert tuple(feedback["properties"]["axes"]["properties"]) == STANDARD_AXES
    # The contract example validates with a generic JSON Schema engine too, when one is installed.
    try:
        import jsonschema
    except ImportError:
        return
    jsonschema.validate(EXAMPLE, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"text": 5}, schema)
    # The critics' keys: the same verdict from both.
    for doc, ok in (({"text": "x", "tests": "t"}, False), ({"text": "x", "tests": "t", "entry_point": "f"}, True),
                    ({"text": "x", "fragment": 1}, False), ({"text": "x", "reference_answer": 4.5}, True),
                    ({"text": "x", "reference_answer": True}, False), ({"text": "x", "language": None}, True)):
        try:
            jsonschema.validate(doc, schema)
            schema_ok = True
        except jsonschema.ValidationError:
            schema_ok = False
        try:
            validate_document(doc)
            validator_ok = True
        except FieldError:
            validator_ok = False
        assert schema_ok == validator_ok == ok, doc


def test_validate_document_directly():
    with pytest.raises(FieldError) as info:
        validate_document({"text": "a", "feedback": {"score": 11}})
    assert info.value.field == "feedback.score"
