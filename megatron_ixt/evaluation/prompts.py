"""The prompts file of ``tools/generate.py --prompts-file`` and where its results go.

Two forms, told apart by the file name:

* ``*.jsonl`` / ``*.json``: one JSON object per line, ``{"prompt": "...", "feedback": {...}}``.
  ``feedback`` is optional (the document format's feedback object: ``score``, ``scale``,
  ``axes``, ``critique``); a line without it is generated under the command line's feedback.
  A chat prompt (``--chat``) may carry its own ``system`` message. Every other key (an
  ``id``, a reference answer) is passed through to the output line.
* anything else: plain text, one prompt per line (blank lines skipped).

A bad line (not JSON, no ``prompt`` string, a bad ``feedback``) is a :class:`DocumentError`
naming the file, the line and the field.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from megatron_ixt.format.errors import DocumentError, FieldError, InputError

JSONL_SUFFIXES = (".jsonl", ".json")


@dataclass
class Prompt:
    """One line of a prompts file."""

    text: str
    line: int
    feedback: Optional[dict] = None
    system: Optional[str] = None
    record: dict = field(default_factory=dict)
    """The input line's fields (the output line starts from them)."""


def _parse(path: str, number: int, line: str) -> Prompt:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as error:
        raise DocumentError(path, number, None, "a JSON object",
                            detail=f"malformed JSON: {error.msg} at column {error.colno}") from None
    if not isinstance(obj, dict):
        raise DocumentError(path, number, None, "a JSON object with a 'prompt' string", obj)
    if not isinstance(obj.get("prompt"), str):
        raise DocumentError(path, number, "prompt", "a string", obj.get("prompt", ...),
                            detail="" if "prompt" in obj else "the key 'prompt' is missing")
    feedback = obj.get("feedback")
    if feedback is not None:
        from megatron_ixt.format.document import Feedback

        try:
            Feedback.from_dict(feedback)
        except FieldError as error:
            raise DocumentError.from_field_error(error, path, number) from None
    system = obj.get("system")
    if system is not None and not isinstance(system, str):
        raise DocumentError(path, number, "system", "a string", system)
    return Prompt(obj["prompt"], number, feedback, system, obj)


def read_prompts(path: str) -> list[Prompt]:
    """Every prompt of ``path`` (see the module docstring), in file order."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read the prompts file: {error}") from None
    jsonl = path.endswith(JSONL_SUFFIXES)
    prompts = [_parse(path, number, line) if jsonl else Prompt(line, number, record={"prompt": line})
               for number, line in enumerate(lines, 1) if line.strip()]
    if not prompts:
        raise InputError(f"{path}: no prompts (no line that is not blank)")
    return prompts


def write_jsonl(path: Optional[str], records: list[dict[str, Any]]) -> None:
    """``records`` as JSON lines to ``path`` (a temporary name, renamed when complete), or to
    standard output when ``path`` is None."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if path is None:
        print(text, end="", flush=True)
        return
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
