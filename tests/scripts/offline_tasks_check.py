"""Builds the offline benchmark folder under a cache folder and runs it through lm-eval, as a
fresh process with the Hugging Face libraries offline (test helper for
tests/evaluation/test_offline_tasks.py).

    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 python tests/scripts/offline_tasks_check.py CACHE_DIR LIMIT

An oracle model answers every GSM8K prompt with its reference ("The answer is N.") and every
HumanEval prompt with its canonical solution, found from the prompt; the first ``LIMIT``
documents of each task are evaluated. Prints one JSON object: the folder, the tasks lm-eval
found, the number of documents, the few-shot context of GSM8K's first document, the results.
"""

import json
import re
import sys
from pathlib import Path

import lm_eval
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager

from megatron_ixt.evaluation.tasks import TASK_NAMES, task_folder


class Oracle(LM):
    def __init__(self, folder: Path) -> None:
        super().__init__()
        read = lambda name: [json.loads(line) for line in open(folder / f"{name}.jsonl", encoding="utf-8")]
        self.gsm = {doc["question"]: doc["target"] for doc in read("gsm8k_offline")}
        self.code = {doc["prompt"]: doc["canonical_solution"] for doc in read("humaneval_offline")}

    def generate_until(self, requests):
        out = []
        for request in requests:
            context = request.args[0]
            if context in self.code:
                out.append(self.code[context])
            else:  # the last "Q: question\nA:" of a few-shot context
                question = re.findall(r"Q: (.*?)\nA:", context, re.DOTALL)[-1]
                out.append(f" Let me think. The answer is {self.gsm[question]}.\n\n")
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError


def main() -> None:
    cache_dir, limit = sys.argv[1], int(sys.argv[2])
    folder = task_folder(cache_dir)
    manager = TaskManager(include_path=str(folder), include_defaults=False)
    tasks = manager.load(list(TASK_NAMES))["tasks"]
    gsm = tasks["gsm8k_offline"]
    first = next(iter(gsm.test_docs()))
    results = lm_eval.simple_evaluate(model=Oracle(folder), tasks=list(TASK_NAMES), task_manager=manager,
                                      limit=limit, confirm_run_unsafe_code=True)
    print(json.dumps({"folder": str(folder), "found": sorted(manager.all_tasks),
                      "docs": {name: len(list(task.test_docs())) for name, task in tasks.items()},
                      "gsm_context": gsm.fewshot_context(first, gsm.config.num_fewshot),
                      "gsm_first": first, "results": results["results"], "n_shot": results["n-shot"]}))


if __name__ == "__main__":
    main()
