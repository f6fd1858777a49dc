"""What the demo compares, and the choices it makes from the critics' verdicts on the
training documents (never from the model's results):

- the kinds of run (``RUN_KINDS``): plain next-token training, the same with a
  beginning-of-document token (the control a fair IXT claim needs: a constant document
  start that carries no information), IXT with critique prefixes, and the same-critique
  control (every document prefixed by one fixed critique of the same length: the prefix
  text without the feedback's information);
- the *best* and *worst* feedback of each domain: what the critics actually wrote on
  training documents (in distribution: no extrapolation beyond what was seen);
- the *good* held-out documents (the critics' levels 4-5) and the task prompts.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

# kind -> (prefix template, extra tools/preprocess_data.py flags). "critique" and "same"
# stand for the demo's critique and same-critique templates (their paths are settings).
RUN_KINDS = {"plain": ("none", ()), "bos": ("none", ("--prepend-bos",)), "ixt": ("critique", ()),
             "same": ("same", ())}


def level_of(doc: dict) -> Optional[int]:
    from megatron_ixt.format.levels import quality_level

    feedback = doc.get("feedback")
    if not feedback or feedback.get("score") is None:
        return None
    return quality_level(feedback["score"], tuple(feedback.get("scale", (0, 10))))


def is_good(doc: dict) -> bool:
    """Level 4-5 by the critics' score."""
    level = level_of(doc)
    return level is not None and level >= 4


def best_worst_by_domain(train: list[dict]) -> dict[str, dict]:
    """Per domain, the feedback of the best and of the worst training document: the highest
    (lowest) score; among equal scores the critique the critics wrote most often, then the
    first in file order (deterministic)."""
    by_domain: dict[str, list[dict]] = {}
    for doc in train:
        if doc.get("feedback") and doc["feedback"].get("score") is not None:
            by_domain.setdefault(doc.get("domain", "prose"), []).append(doc["feedback"])
    out = {}
    for domain, feedbacks in sorted(by_domain.items()):
        pick = {}
        for which, extreme in (("best", max), ("worst", min)):
            score = extreme(f["score"] for f in feedbacks)
            tied = [f for f in feedbacks if f["score"] == score]
            common = Counter(f.get("critique", "") for f in tied).most_common()
            top = max(count for _, count in common)
            text = next(text for text, count in common if count == top)
            pick[which] = next(f for f in tied if f.get("critique", "") == text)
        out[domain] = pick
    return out


def task_prompts(docs: list[dict], limit: int, words: int = 8, stride: int = 0) -> list[dict]:
    """Prompts from held-out prose (the demo passes its good documents): the first ``words``
    words of each document (with ``stride``, also every ``stride`` words further in, while
    30 words follow), with the document's domain feedback targets (so that every run can be
    sampled under them)."""
    prompts = []
    for doc in docs:
        if doc.get("domain") != "prose":
            continue
        text = doc["text"].split()
        for start in range(0, len(text) - 29, stride or len(text)):
            if len(prompts) >= limit:
                return prompts
            prompts.append({"kind": "prose", "id": doc.get("id") if not start else f"{doc.get('id')}@{start}",
                            "prompt": " ".join(text[start:start + words]) + " ",
                            "best_feedback": doc.get("best_feedback"), "worst_feedback": doc.get("worst_feedback")})
    return prompts
