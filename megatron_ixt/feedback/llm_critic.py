"""The LLM critic: a (thinking) judge model behind an OpenAI-compatible endpoint rates each
document with a rubric over the five axes and writes the critique.

Flow for one document:

1. render the rubric prompt (``prompts/<name>.yaml``, versioned as data) with the document;
2. ask the judge (``http_client.ChatClient``: retries, backoff, bounded concurrency);
3. separate the reasoning from the verdict: a ``reasoning_content``/``reasoning`` field,
   or ``<think>...</think>`` inside the content -- only the text after the reasoning is
   read as the verdict;
4. parse and validate the JSON verdict (a number for the score and for every axis of the
   rubric, a critique); if it is malformed, ask once more, quoting the problem; a second
   malformed answer fails this document (``VerdictError``), which the pipeline records as
   an error.

The reasoning is kept on ``Feedback.reasoning`` so that the pipeline can write it to an
audit file; it never goes into the training record.
"""

from __future__ import annotations

import json
import math
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from megatron_ixt.feedback.base import Critic, VerdictError
from megatron_ixt.feedback.documents import CONVERSATION_KEY
from megatron_ixt.feedback.http_client import ChatClient, RetryPolicy
from megatron_ixt.feedback.record import AXES, Feedback

PROMPT_DIR = Path(__file__).with_name("prompts")
API_KEY_VARIABLES = ("IXT_JUDGE_API_KEY", "OPENAI_API_KEY")
MAX_CRITIQUE_CHARS = 2000
_THINK = re.compile(r"<(think|thinking|reasoning)>(.*?)</\1>", re.DOTALL | re.IGNORECASE)
_OPEN_THINK = re.compile(r"<(think|thinking|reasoning)>", re.IGNORECASE)
_CLOSE_THINK = re.compile(r"</(think|thinking|reasoning)>", re.IGNORECASE)


class MalformedVerdict(ValueError):
    """The judge's final answer is not a valid verdict; the message says why."""


@dataclass(frozen=True)
class RubricPrompt:
    """A rubric prompt loaded from YAML."""

    name: str
    version: int
    system: str
    user: str
    reask: str
    axes: dict[str, str]
    scale: tuple[float, float]
    max_document_chars: int

    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> "RubricPrompt":
        """Load ``prompts/<name>.yaml`` or a YAML file at a path."""
        path = Path(name_or_path)
        if not path.suffix:
            path = PROMPT_DIR / f"{name_or_path}.yaml"
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
        missing = {"name", "version", "system", "user", "reask", "axes", "scale"} - set(data)
        if missing:
            raise ValueError(f"{path}: prompt lacks {', '.join(sorted(missing))}")
        if set(data["axes"]) != set(AXES):
            raise ValueError(f"{path}: axes must be exactly {', '.join(AXES)}")
        return cls(name=data["name"], version=int(data["version"]), system=data["system"],
                   user=data["user"], reask=data["reask"], axes=dict(data["axes"]),
                   scale=(float(data["scale"][0]), float(data["scale"][1])),
                   max_document_chars=int(data.get("max_document_chars", 12000)))

    def messages(self, doc: Mapping[str, Any]) -> list[dict[str, str]]:
        """System and user messages for one document."""
        axes = "\n".join(f"- {name}: {description}" for name, description in self.axes.items())
        user = string.Template(self.user).substitute(
            axes=axes, domain=doc.get("domain") or "unspecified", extra=_extra_context(doc),
            # A conversation: the judge reads the whole exchange, not only the answers.
            text=_shorten(doc.get(CONVERSATION_KEY) or doc["text"], self.max_document_chars))
        return [{"role": "system", "content": self.system.strip()},
                {"role": "user", "content": user.strip()}]

    def reask_message(self, error: str) -> dict[str, str]:
        return {"role": "user", "content": string.Template(self.reask).substitute(error=error).strip()}


def _extra_context(doc: Mapping[str, Any]) -> str:
    """What else the judge should know: the reference answer, the tests."""
    extra = ""
    if doc.get("reference_answer") is not None:
        extra += f"\nThe reference final answer is: {doc['reference_answer']}."
    if doc.get("tests"):
        extra += (f"\nThe function {doc.get('entry_point')} is meant to pass these tests "
                  f"(not part of the document):\n<tests>\n{_shorten(doc['tests'], 3000)}\n</tests>")
    return extra


def _shorten(text: str, limit: int) -> str:
    """Head and tail of a long text with a marker, so the judge sees both ends."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    return f"{text[:head]}\n[... {len(text) - limit} characters omitted ...]\n{text[-tail:]}"


def split_reasoning(content: str, reasoning_field: str | None) -> tuple[str, str | None]:
    """(final answer, reasoning) of a judge reply.

    Reasoning arrives either in a separate field or inside the content as
    ``<think>...</think>``; some chat templates put the opening tag in the prompt, so a
    lone ``</think>`` also ends the reasoning. An unclosed ``<think>`` means the judge ran
    out of tokens while thinking: there is no final answer.
    """
    reasoning = [reasoning_field] if reasoning_field else []
    reasoning += [match.group(2).strip() for match in _THINK.finditer(content)]
    final = _THINK.sub("", content)
    closes = list(_CLOSE_THINK.finditer(final))
    if closes:  # "</think>" without its opening tag: everything before the last one
        reasoning.append(final[:closes[-1].start()].strip())
        final = final[closes[-1].end():]
    opening = _OPEN_THINK.search(final)
    if opening:  # "<think>" that never closes
        reasoning.append(final[opening.end():].strip())
        final = final[:opening.start()]
    return final.strip(), "\n\n".join(part for part in reasoning if part) or None


def _json_objects(text: str) -> list[Any]:
    """Every JSON object that can be decoded starting at some ``{`` in ``text``."""
    decoder = json.JSONDecoder()
    found = []
    position = text.find("{")
    while position != -1:
        try:
            value, end = decoder.raw_decode(text, position)
            found.append(value)
            position = text.find("{", end)
        except ValueError:
            position = text.find("{", position + 1)
    return found


def _number(value: Any, what: str, scale: tuple[float, float]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MalformedVerdict(f"{what} must be a number, got {json.dumps(value)}")
    if not scale[0] <= value <= scale[1]:
        raise MalformedVerdict(f"{what} = {value} is outside {scale[0]:g}-{scale[1]:g}")
    return float(value)


def parse_verdict(final: str, scale: tuple[float, float] = (0.0, 10.0),
                  axes_required: tuple[str, ...] = AXES) -> tuple[float, dict[str, float], str]:
    """(score, axes, critique) from the judge's final answer; MalformedVerdict if unusable.

    A verdict must score every axis of the rubric (``axes_required``): a judge that scored
    2 of 5 did not follow the rubric, and its overall score is not comparable with the
    others'. Such a verdict is malformed (re-asked once, then the document is an error).
    """
    if not final.strip():
        raise MalformedVerdict("the reply has no answer after the reasoning")
    verdicts = [obj for obj in _json_objects(final) if isinstance(obj, dict) and "score" in obj]
    if not verdicts:
        raise MalformedVerdict("no JSON object with a \"score\" key was found")
    verdict = verdicts[-1]  # a judge that restates its answer means the last one
    score = _number(verdict["score"], "score", scale)
    raw_axes = verdict.get("axes", {})
    if not isinstance(raw_axes, dict):
        raise MalformedVerdict("\"axes\" must be an object")
    unknown = set(raw_axes) - set(AXES)
    if unknown:
        raise MalformedVerdict(f"unknown axes {sorted(unknown)}; the axes are {', '.join(AXES)}")
    missing = [name for name in axes_required if raw_axes.get(name) is None]
    if missing:
        raise MalformedVerdict(f"\"axes\" lacks {', '.join(missing)}; score every axis: "
                               f"{', '.join(axes_required)}")
    axes = {name: _number(value, f"axes.{name}", scale) for name, value in raw_axes.items()
            if value is not None}
    critique = verdict.get("critique")
    if not isinstance(critique, str) or not critique.strip():
        raise MalformedVerdict("\"critique\" must be a non-empty string")
    critique = " ".join(critique.split())
    if len(critique) > MAX_CRITIQUE_CHARS:
        critique = critique[:MAX_CRITIQUE_CHARS].rsplit(" ", 1)[0] + " ..."
    return score, axes, critique


def api_key_from_environment() -> str | None:
    """The first of IXT_JUDGE_API_KEY, OPENAI_API_KEY that is set."""
    for variable in API_KEY_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    return None


class LLMCritic(Critic):
    """Rates documents with a judge model behind an OpenAI-compatible endpoint."""

    name = "llm"

    def __init__(self, endpoint: str, model: str, api_key: str | None = None,
                 prompt: str = "rubric_v1", temperature: float = 0.0, max_tokens: int | None = None,
                 timeout_s: float = 120.0, max_retries: int = 5, backoff_s: float = 1.0,
                 concurrency: int = 8, extra_params: Mapping[str, Any] | None = None):
        self.prompt = RubricPrompt.load(prompt)
        self.model = model
        self.client = ChatClient(endpoint, model, api_key or api_key_from_environment(),
                                 timeout_s=timeout_s, max_concurrency=concurrency,
                                 retry=RetryPolicy(max_retries=max_retries, backoff_s=backoff_s))
        self.params: dict[str, Any] = {"temperature": temperature, **(extra_params or {})}
        if max_tokens is not None:
            self.params["max_tokens"] = max_tokens
        self.default_workers = concurrency
        self.version = str(self.prompt.version)

    @property
    def judge(self) -> str:
        return f"{self.model} (prompt {self.prompt.name}/{self.prompt.version})"

    def describe(self) -> dict[str, Any]:
        return {"judge": self.judge, "params": self.params}

    def close(self) -> None:
        self.client.close()

    def critique(self, doc: Mapping[str, Any]) -> Feedback:
        messages = self.prompt.messages(doc)
        reasoning_parts: list[str] = []
        for attempt in range(2):  # the first answer, and one re-ask if it is malformed
            response = self.client.chat(messages, **self.params)
            final, reasoning = split_reasoning(response.content, response.reasoning)
            if reasoning:
                reasoning_parts.append(reasoning)
            try:
                score, axes, critique = parse_verdict(final, self.prompt.scale, tuple(self.prompt.axes))
            except MalformedVerdict as error:
                if response.finish_reason == "length":
                    error = MalformedVerdict(f"{error} (the reply was cut off at the token limit)")
                if attempt == 1:
                    raise VerdictError(f"malformed verdict twice: {error}") from None
                messages = messages + [{"role": "assistant", "content": final or response.content},
                                       self.prompt.reask_message(str(error))]
                continue
            return Feedback(score=score, axes=axes, critique=critique, judge=self.judge,
                            scale=self.prompt.scale,
                            reasoning="\n\n".join(reasoning_parts) or None)
        raise AssertionError("unreachable")
