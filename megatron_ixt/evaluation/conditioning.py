"""How much does the model use its feedback? Loss of the same text under chosen prefixes.

(For an SFT model, :func:`evaluate_chat_conditioning` does the same for the assistant turns
of conversations, with the feedback in the system message.)

For every held-out document, the loss of its text tokens is measured under four contexts:

    none   [start] text                      (unconditional)
    own    [start] <|feedback|> its own feedback <|/feedback|> text
    best   [start] <|feedback|> best feedback (level 5) <|/feedback|> text
    worst  [start] <|feedback|> worst feedback (level 1) <|/feedback|> text

``[start]`` is the model's document start (``model.text_start``; a BOS model's follows the
prefix, as its training data has it): the EOD for models
pretrained here, which mirrors training, where every document follows the previous one's EOD,
so the first text token is predicted in all four conditions from comparable context. A
model whose documents start with nothing (an imported one) has no context for the first text
token without a prefix: there, the first text token is left out of all four. The text
window is the same in all four (truncated so that the longest prefix still fits in
``seq_length``), so the four numbers are losses of exactly the same tokens; a document whose
longest prefix leaves no room for two text tokens is skipped, and counted. Levels come from
the quality thresholds the training data used (quantile cut points when it used them). ``worst - best`` is the conditioning
gap: positive when better feedback makes the same text more likely, i.e. when the model
uses the feedback.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from megatron_ixt.format.prefixes import feedback_for_level, load_template, prefix_token_ids

CONDITIONS = ("none", "own", "best", "worst")
BEST_CRITIQUE = "Excellent: correct, clear, idiomatic and well documented; dense with useful content."
WORST_CRITIQUE = "Poor: incorrect or broken, hard to follow, repetitive and of little use."


@dataclass
class ConditioningResult:
    per_document: list = field(default_factory=list)
    skipped_no_room: int = 0  # documents whose longest prefix left no room in seq_length

    def summary(self) -> dict:
        out: dict = {"documents": len(self.per_document), "skipped_prefix_too_long": self.skipped_no_room}
        for cond in CONDITIONS:
            rows = [d for d in self.per_document if cond in d["loss"]]
            tokens = sum(d["tokens"] for d in rows)
            out[cond] = {"documents": len(rows),
                         "loss": sum(d["loss"][cond] * d["tokens"] for d in rows) / tokens if tokens else math.nan}
        out["gap_worst_minus_best"] = out["worst"]["loss"] - out["best"]["loss"]
        both = [d for d in self.per_document if "best" in d["loss"]]
        out["share_best_below_worst"] = (sum(d["loss"]["best"] < d["loss"]["worst"] for d in both) / len(both)
                                         if both else math.nan)
        by_level: dict = {}
        for d in self.per_document:
            if d.get("level"):
                by_level.setdefault(d["level"], []).append(d)
        out["own_minus_none_by_level"] = {
            str(level): sum(d["loss"]["own"] - d["loss"]["none"] for d in rows) / len(rows)
            for level, rows in sorted(by_level.items())}
        return out

    def table(self) -> str:
        s = self.summary()
        lines = [f"{'condition':10} {'documents':>9} {'text loss':>10}"]
        if s["skipped_prefix_too_long"]:
            lines.insert(0, f"skipped {s['skipped_prefix_too_long']} documents: their longest prefix leaves no room "
                            "for text in --seq-length (conversations: too long, or their assistant tokens change "
                            "with the feedback)")
        for cond in CONDITIONS:
            lines.append(f"{cond:10} {s[cond]['documents']:>9} {s[cond]['loss']:>10.4f}")
        lines.append(f"conditioning gap (worst - best): {s['gap_worst_minus_best']:+.4f} nats/token; "
                     f"best < worst on {100 * s['share_best_below_worst']:.1f}% of documents")
        if s["own_minus_none_by_level"]:
            lines.append("own feedback - no prefix, by the document's own quality level: " + ", ".join(
                f"L{k} {v:+.4f}" for k, v in s["own_minus_none_by_level"].items()))
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"summary": self.summary(), "documents": self.per_document}, indent=1)


def condition_prefixes(tokenizer, template: str, feedback: Optional[dict], thresholds=None,
                       best_worst: Optional[tuple[dict, dict]] = None) -> dict[str, list[int]]:
    """Token ids of the prefix for each condition (``own`` only for annotated documents).
    ``best_worst``: the document's own best and worst feedback (an input line's
    ``best_feedback``/``worst_feedback``, e.g. the best and worst critiques the critics
    wrote for training documents of its domain) instead of the generic ones below."""
    if best_worst is not None:
        best, worst = best_worst
    elif load_template(template).kind == "critique":
        best = feedback_for_level(5, critique=BEST_CRITIQUE)
        worst = feedback_for_level(1, critique=WORST_CRITIQUE)
    else:
        best, worst = 5, 1
    prefixes = {"none": [], "best": prefix_token_ids(tokenizer, template, best, thresholds),
                "worst": prefix_token_ids(tokenizer, template, worst, thresholds)}
    if feedback is not None:
        prefixes["own"] = prefix_token_ids(tokenizer, template, feedback, thresholds)
    return prefixes


def evaluate_conditioning(model, tokenizer, documents: list[dict], template: str, seq_length: int,
                          batch_size: int = 8, thresholds=None, progress=None) -> ConditioningResult:
    """Text-token losses of ``documents`` under the four conditions (see module docstring).
    Every sequence the model sees is at most ``seq_length`` tokens long. ``thresholds``: the
    training data's :class:`~megatron_ixt.format.levels.QualityThresholds` (default fixed)."""
    from megatron_ixt.format.levels import QualityThresholds

    thresholds = thresholds or QualityThresholds.fixed()
    result = ConditioningResult()
    jobs = []  # (document row, condition, tokens, the positions whose tokens are scored)
    skip = 0 if model.document_start_ids else 1  # with no start token, the first text token has no context in "none"
    for i, doc in enumerate(documents):
        feedback = doc.get("feedback")
        prefixes = condition_prefixes(tokenizer, template, feedback, thresholds, _targets(doc))
        starts = {cond: model.text_start(prefix) for cond, prefix in prefixes.items()}
        room = seq_length - max(len(start) for start in starts.values())
        if room < 2:
            result.skipped_no_room += 1
            continue
        text = list(tokenizer.tokenize(doc["text"]))[:room]
        if len(text) < 2 + skip:
            continue
        row = _row(doc, i, feedback, thresholds, len(text) - skip)
        result.per_document.append(row)
        for cond, start in starts.items():
            jobs.append((row, cond, [*start, *text], range(len(start) + skip, len(start) + len(text))))
    _score(model, jobs, batch_size, progress)
    return result


def evaluate_chat_conditioning(model, tokenizer, conversations: list[dict], template: str, seq_length: int,
                               batch_size: int = 8, thresholds=None, progress=None) -> ConditioningResult:
    """For an SFT model: the losses of each conversation's assistant turns with no feedback
    and with its own, the best and the worst feedback in the system message, as SFT trains
    it (``tokenizers/chat.py``). The scored tokens are the same in all four: the assistant
    tokens that fit in ``seq_length`` under the longest feedback (later ones are cut, as SFT
    truncates an overlong conversation). A conversation with fewer than two such tokens is
    skipped and counted, as is one whose assistant tokens a feedback changes."""
    from megatron_ixt.format.levels import QualityThresholds
    from megatron_ixt.tokenizers.chat import LOSS, chat_template_for, render_ids

    thresholds = thresholds or QualityThresholds.fixed()
    chat = chat_template_for(tokenizer)
    result = ConditioningResult()
    jobs = []
    for i, doc in enumerate(conversations):
        feedback = doc.get("feedback")
        prefixes = condition_prefixes(tokenizer, template, feedback, thresholds, _targets(doc))
        rendered = {cond: render_ids(tokenizer, chat, doc["messages"], prefix or None) for cond, prefix in prefixes.items()}
        scored = {cond: ((roles & LOSS) != 0).nonzero()[0] for cond, (_, roles) in rendered.items()}
        fit = min(int((positions < seq_length).sum()) for positions in scored.values())
        same = len({tuple(ids[scored[cond][:fit]].tolist()) for cond, (ids, _) in rendered.items()}) == 1
        if fit < 2 or not same:
            result.skipped_no_room += 1
            continue
        row = _row(doc, i, feedback, thresholds, fit - int(scored["none"][0] == 0))
        result.per_document.append(row)
        for cond, (ids, _) in rendered.items():
            positions = scored[cond][:fit]
            jobs.append((row, cond, ids[:positions[-1] + 1].tolist(), [int(t) for t in positions if t > 0]))
    _score(model, jobs, batch_size, progress)
    return result


def _targets(doc: dict):
    """An input line's own best and worst feedback, when it gives them."""
    return (doc["best_feedback"], doc["worst_feedback"]) if "best_feedback" in doc else None


def _row(doc: dict, index: int, feedback, thresholds, tokens: int) -> dict:
    level = thresholds.level(feedback["score"], feedback.get("scale", (0, 10))) if feedback else 0
    return {"id": doc.get("id", index), "domain": doc.get("domain"), "level": level, "tokens": tokens, "loss": {}}


def _score(model, jobs: list, batch_size: int, progress) -> None:
    """Each job's mean loss over its scored positions (position ``t`` is predicted from the
    tokens before it), in right-padded batches through ``model.token_losses``."""
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        length = max(len(j[2]) for j in batch)
        tokens = torch.zeros(len(batch), length, dtype=torch.long)
        for b, (_, _, seq, _) in enumerate(batch):
            tokens[b, :len(seq)] = torch.tensor(seq)
        losses = model.token_losses(tokens[:, :-1], tokens[:, 1:])  # [b, length - 1]: label t is token t + 1
        for b, (row, cond, _, positions) in enumerate(batch):
            row["loss"][cond] = losses[b, [t - 1 for t in positions]].mean().item()
        if progress:
            progress(min(start + batch_size, len(jobs)), len(jobs))
