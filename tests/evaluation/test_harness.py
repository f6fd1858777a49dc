"""tools/evaluate_benchmarks.py: lm-evaluation-harness on this project's engine.

* On the session's tiny model at TP=2 under a chosen feedback, the loglikelihoods lm-eval
  records (its samples files) equal the continuation's log-probability that
  ``InferenceModel.token_losses`` gives at TP=1 for each request alone, computed here from the
  request's text (document start, feedback prefix, text; lm-eval's context/continuation
  split), and lm-eval's results JSON is where lm-eval puts it.
* On SmolLM2-135M imported and exported back, without feedback, its metrics and generations
  equal lm-eval's own ``hf`` backend on the exported folder, on a loglikelihood task and a
  ``generate_until`` task over local files.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.launch import run_python, run_torchrun

CHOICES = [("The capital of France is", ["Paris", "London", "Berlin", "Madrid"], 0),
           ("def add(a, b):\n    return", ["a + b", "a - b", "None", "print(a)"], 0),
           ("The largest planet in our solar system is", ["Jupiter", "Mars", "Venus", "Mercury"], 0),
           ("import os\nimport", ["sys", "os", "json", "re"], 0),
           ("The opposite of hot is", ["cold", "warm", "big", "fast"], 0)]
QUESTIONS = [("Q: What is the capital of France?\nA:", "Paris"), ("Q: What is 2 + 3?\nA:", "5"),
             ("Q: What color is the sky?\nA:", "blue"), ("def add(a, b):\n    return", "a + b")]


def local_tasks(folder) -> str:
    """Two lm-eval tasks over local JSONL files: ``local_choice`` (multiple choice:
    loglikelihoods) and ``local_until`` (generate_until, stops at a newline)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "choice.jsonl").write_text("".join(
        json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in CHOICES))
    (folder / "until.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS))
    common = "dataset_path: json\ntest_split: test\ndataset_kwargs:\n  data_files:\n    test: {path}\n"
    (folder / "local_choice.yaml").write_text(
        "task: local_choice\n" + common.format(path=folder / "choice.jsonl") + "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (folder / "local_until.yaml").write_text(
        "task: local_until\n" + common.format(path=folder / "until.jsonl") + "output_type: generate_until\n"
        'doc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 16\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n")
    return str(folder)


def read_output(folder) -> tuple[dict, dict]:
    """lm-eval's results JSON and its samples per task, as lm-eval's EvaluationTracker writes them."""
    [model_dir] = [p for p in folder.iterdir() if p.is_dir()]
    [results] = model_dir.glob("results_*.json")
    samples = {}
    for path in model_dir.glob("samples_*.jsonl"):
        task = path.name[len("samples_"):].rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
    return json.loads(results.read_text()), samples


@pytest.mark.slow
def test_loglikelihoods_under_feedback_equal_token_losses(ixt_checkpoint, ixt_corpus, offline_tasks, tmp_path):
    from megatron_ixt.evaluation.control import control_prefix
    from megatron_ixt.tokenizers.build import build_tokenizer

    tasks, out = local_tasks(tmp_path / "tasks"), tmp_path / "out"
    env = {"MEGATRON_IXT_CACHE": str(offline_tasks.parents[1])}  # the session's offline tasks
    proc = run_torchrun(2, "tools/evaluate_benchmarks.py", [
        "--load", ixt_checkpoint.path, "--tensor-model-parallel-size", 2, "--prefix-template", "quality",
        "--feedback-level", 2, "--tasks", "local_choice,local_until", "--include_path", tasks, "--batch_size", 3,
        "--log_samples", "--output_path", out], env=env, timeout=600)
    assert "local_choice" in proc.stdout and "acc" in proc.stdout  # lm-eval's table
    results, samples = read_output(out)
    assert results["config"]["feedback"] == "<|feedback|>Quality: 2/5<|/feedback|>"
    assert results["config"]["tensor_model_parallel_size"] == 2
    assert set(results["results"]) == {"local_choice", "local_until"}
    assert len(samples["local_until"]) == len(QUESTIONS) and all(
        isinstance(s["resps"][0][0], str) for s in samples["local_until"])

    # The reference: each request alone, its ids built here from its text as training lays a
    # document out ([eod] [feedback prefix] text), scored by token_losses at TP=1.
    tokenizer = build_tokenizer("SentencePieceTokenizer", ixt_corpus["tokenizer"])
    start = [tokenizer.eod, *control_prefix(tokenizer, "quality", 2)]
    pairs, recorded = [], []
    for sample in samples["local_choice"]:
        for args, (loglikelihood, greedy) in zip(sample["arguments"].values(), sample["filtered_resps"]):
            context, continuation = args["arg_0"], args["arg_1"]
            whole, head = tokenizer.tokenize(context + continuation), tokenizer.tokenize(context)
            pairs.append([start + list(head), list(whole[len(head):])])
            recorded.append((float(loglikelihood), greedy == "True"))
    (tmp_path / "pairs.json").write_text(json.dumps([[list(map(int, a)), list(map(int, b))] for a, b in pairs]))
    run_torchrun(1, "tests/scripts/loglikelihoods.py", ["--load", ixt_checkpoint.path, "--pairs",
                                                        tmp_path / "pairs.json", "--out", tmp_path / "ref.json"])
    reference = json.loads((tmp_path / "ref.json").read_text())
    worst = max(abs(ours[0] - theirs[0]) for ours, theirs in zip(recorded, reference))
    print(f"{len(pairs)} loglikelihoods at TP=2 (batches of 3) against token_losses at TP=1 one by one: "
          f"max |difference| {worst:.2g}")
    assert worst < 1e-4 and [r[1] for r in recorded] == [r[1] for r in reference]


@pytest.mark.slow
def test_metrics_and_generations_equal_lm_evals_hf_backend(smollm2_checkpoint, offline_tasks, tmp_path):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    hf = tmp_path / "hf"
    tasks, out = local_tasks(tmp_path / "tasks"), tmp_path / "out"
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    # Our run (one process) does not read the export: it runs beside the export and lm-eval's
    # own evaluation of it, which need the other core.
    with ThreadPoolExecutor(1) as pool:
        our_run = pool.submit(run_python, "tools/evaluate_benchmarks.py", [
            "--load", smollm2_checkpoint, "--tasks", "local_choice,local_until", "--include_path", tasks,
            "--batch_size", 8, "--log_samples", "--output_path", out],
            env={"MEGATRON_IXT_CACHE": str(offline_tasks.parents[1])})
        proc = run_python("tools/convert_checkpoint.py", ["--to", "hf", "--load", smollm2_checkpoint, "--output", hf])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        theirs = lm_eval.simple_evaluate(model=HFLM(pretrained=str(hf), dtype="float32", device="cpu", batch_size=1),
                                         tasks=["local_choice", "local_until"],
                                         task_manager=TaskManager(include_path=tasks), log_samples=True)
        our_run.result()
    ours, our_samples = read_output(out)

    for task in ("local_choice", "local_until"):
        metrics = {k: v for k, v in ours["results"][task].items() if "," in k}
        assert metrics == {k: theirs["results"][task][k] for k in metrics}, task
        print(f"{task}: {metrics}")
    for a, b in zip(our_samples["local_until"], theirs["samples"]["local_until"]):
        assert a["filtered_resps"] == b["filtered_resps"], (a["filtered_resps"], b["filtered_resps"])
    differences = [abs(float(x[0]) - float(y[0])) for a, b in zip(our_samples["local_choice"],
                                                                   theirs["samples"]["local_choice"])
                   for x, y in zip(a["filtered_resps"], b["filtered_resps"])]
    print(f"generations equal on {len(QUESTIONS)} prompts; loglikelihoods: max |difference| {max(differences):.2g}")
    assert max(differences) < 1e-3
