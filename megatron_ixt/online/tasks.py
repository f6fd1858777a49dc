"""The online stage's data, from prompt to training record: what a prompt must carry for its
critic, the samples asked of the generator, the records the critics judge, the levels and
verdicts they earn, and what each mode trains on.

A **prompt** is a line of the ``--prompts`` JSONL (``tools/generate.py``'s prompts format):
``{"prompt": ..., "id": ..., "domain": ..., <what its critic needs>}``. Its critic needs
(:data:`CRITIC_NEEDS`): ``reference_answer`` for ``math``, ``tests`` and ``entry_point`` for
``python``; ``text`` and ``llm`` judge any text; ``auto`` picks by ``domain`` as
``feedback.auto`` does (``math``, ``code``, else text). A line that lacks them is refused,
naming the file, the line and the field, before anything is sampled.

A **sample** becomes the record the critics judge and training reads:

* ``--chat`` (an SFT model): a conversation, ``messages`` = [system?, user = prompt,
  assistant = sample]; training puts the feedback in the system message (``--sft``);
* otherwise (a pretrained model): a document, ``text`` = prompt + sample; training puts the
  feedback before it as a prefix.

Every key of the prompt but ``prompt`` and ``system`` is copied onto the record, so the
critic finds ``reference_answer``, ``tests`` or ``domain`` where it looks for them.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

from megatron_ixt.evaluation.prompts import Prompt, read_prompts
from megatron_ixt.feedback.documents import DOMAIN_CODE, DOMAIN_MATH
from megatron_ixt.format.document import Feedback, validate_line_keys
from megatron_ixt.format.errors import DocumentError, FieldError
from megatron_ixt.format.levels import QualityThresholds

MODES = ("ixt", "filter", "plain")
"""``ixt``: every sample, with the feedback it earned; ``filter`` (rejection-sampling
fine-tuning): the accepted samples only, without feedback; ``plain`` (self-training): every
sample, without feedback."""

ACCEPTED_LEVELS = (4, 5)
"""A sample is accepted when its verdict is at one of these quality levels of the critic's
own scale (for math: the right final answer)."""

CRITIC_NEEDS = {"math": ("reference_answer",), "python": ("tests", "entry_point"), "text": (), "llm": ()}
"""The keys a prompt must carry for each critic."""


def critic_for(critic: str, record: dict) -> str:
    """The critic that judges ``record``: ``critic`` itself, or for ``auto`` the one
    ``feedback.auto.AutoCritic`` dispatches to by ``domain``."""
    if critic != "auto":
        return critic
    domain = record.get("domain")
    if domain == DOMAIN_CODE and record.get("language", "python") == "python":
        return "python"
    return "math" if domain == DOMAIN_MATH else "text"


def read_tasks(path: str, critic: str) -> list[Prompt]:
    """The prompts of ``path``, each checked for what its critic needs (DocumentError
    naming the file, the line and the field)."""
    prompts = read_prompts(path)
    if not path.endswith((".jsonl", ".json")):
        raise DocumentError(path, 1, None, "a JSONL file of prompts (*.jsonl)",
                            detail="the critics need each prompt's fields (reference_answer, tests, ...)")
    seen = {}
    for p in prompts:
        if p.feedback is not None:
            raise DocumentError(path, p.line, "feedback", "no feedback on a prompt",
                                detail="the online stage samples under --target-level / --target-critique")
        try:
            validate_line_keys(p.record)
        except FieldError as error:
            raise DocumentError.from_field_error(error, path, p.line) from None
        judge = critic_for(critic, p.record)
        for key in CRITIC_NEEDS[judge]:
            value = p.record.get(key)
            if value is None or value == "":
                raise DocumentError(path, p.line, key, f"a value: the {judge} critic judges a sample against it",
                                    detail=f"the key {key!r} is missing" if key not in p.record else "")
        ident = str(p.record.get("id", f"line{p.line}"))
        if ident in seen:
            raise DocumentError(path, p.line, "id", "an id of its own", ident,
                                detail=f"line {seen[ident]} has the same id")
        seen[ident] = p.line
    return prompts


def prompt_id(p: Prompt) -> str:
    return str(p.record.get("id", f"line{p.line}"))


def sample_requests(prompts: list[Prompt], samples_per_prompt: int, round_number: int) -> list[dict]:
    """The lines of the generator's prompts file: each prompt ``samples_per_prompt`` times.
    ``tools/generate.py`` seeds each line from its index, so the copies sample differently."""
    out = []
    for p in prompts:
        for k in range(samples_per_prompt):
            line = {key: value for key, value in p.record.items() if key != "id"}
            out.append({**line, "id": f"{prompt_id(p)}/r{round_number}/s{k}", "prompt_id": prompt_id(p),
                        "sample": k})
    return out


def sample_record(sample: dict, chat: bool) -> Optional[dict]:
    """The record the critics judge, from one line of the generator's output; None for an
    empty answer of a chat model (no assistant turn to judge or train on: it counts as a
    sample that was not accepted)."""
    if chat and not sample["output"].strip():
        return None
    fields = {k: v for k, v in sample.items() if k not in ("prompt", "system", "output", "finish_reason")}
    if chat:
        system = [{"role": "system", "content": sample["system"]}] if sample.get("system") else []
        messages = [*system, {"role": "user", "content": sample["prompt"]},
                    {"role": "assistant", "content": sample["output"]}]
        return {**fields, "messages": messages}
    return {**fields, "text": sample["prompt"] + sample["output"]}


def earned(record: dict, thresholds: QualityThresholds) -> Optional[tuple[float, int]]:
    """(normalized score, quality level) of a judged record; None when no critic judged it."""
    if record.get("feedback") is None:
        return None
    feedback = Feedback.from_dict(record["feedback"])
    scale = feedback.scale or (0.0, 10.0)
    return (feedback.score - scale[0]) / (scale[1] - scale[0]), thresholds.level(feedback.score, scale)


def is_accepted(record: dict) -> bool:
    """The critic's verdict is at level 4-5 of its own scale (the fixed fifths, whatever cut
    points the run's levels use: quantile cuts of a pass/fail verifier's scores tie, and
    would accept wrong answers)."""
    verdict = earned(record, QualityThresholds.fixed())
    return verdict is not None and verdict[1] in ACCEPTED_LEVELS


def training_records(records: Iterable[dict], mode: str) -> list[dict]:
    """What ``mode`` trains on: ``ixt`` every record with its feedback; ``filter`` the
    accepted ones, without feedback; ``plain`` every record, without feedback."""
    if mode == "ixt":
        return list(records)
    keep = (r for r in records if mode == "plain" or is_accepted(r))
    return [{k: v for k, v in r.items() if k != "feedback"} for r in keep]


def round_thresholds(records: list[dict], kind: str) -> QualityThresholds:
    """The level cut points of every round, from the first round's verdicts: ``fixed``
    fifths, or the ``quantile`` cut points of its normalized scores (kept as ``given`` ones)."""
    if kind == "fixed":
        return QualityThresholds.fixed()
    scores = [v[0] for v in (earned(r, QualityThresholds.fixed()) for r in records) if v is not None]
    return QualityThresholds("given", QualityThresholds.from_scores(scores).cut_points)


def read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
