"""tools/online_ixt.py end to end on the suite's tiny model: rounds of sampling (the batched
generator), judging (the LLM critic against a stand-in judge whose verdicts are mixed),
preprocessing and training (torchrun, TP=2), checked in the files each stage leaves; a run
killed after its annotation resumes without sampling again; bad prompts are refused before
anything is sampled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from megatron_ixt.format.levels import QualityThresholds
from megatron_ixt.online import tasks
from tests.launch import REPO, _free_port, child_env

TRAINING = ["--train-iters", 2, "--micro-batch-size", 2, "--global-batch-size", 4, "--lr", 1e-3,
            "--lr-warmup-iters", 0, "--log-interval", 1, "--num-workers", 0]


@pytest.fixture(scope="module")
def judge_endpoint():
    """The stand-in judge: an OpenAI-compatible server whose verdict on a document is 9
    (level 5) or 2 (level 2), by the document's hash."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "slurm" / "fake_judge.py"), "--port", str(port),
                               "--name", "judge", "--mixed"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    assert "listening" in server.stdout.readline()
    yield f"http://127.0.0.1:{port}/v1"
    server.terminate()
    server.wait()


def driver(ixt_checkpoint, judge_endpoint, prompts: Path, out: Path, *flags) -> list[str]:
    return [sys.executable, str(REPO / "tools" / "online_ixt.py"), "--load", ixt_checkpoint.path, "--prompts", prompts,
            "--output-dir", out, "--critic", "llm", "--endpoint", judge_endpoint, "--model", "judge",
            "--max-new-tokens", 6, "--nproc-per-node", 2, *flags, *TRAINING]


def run_driver(command: list, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, ixt_checkpoint, judge_endpoint):
    """One IXT round on chat prompts, killed (SIGKILL, the whole process group) once its
    annotation is done, then started again: (run folder, the first run's output, the second's,
    the samples file's mtime after the first run)."""
    root = tmp_path_factory.mktemp("online_chat")
    prompts, out = root / "prompts.jsonl", root / "run"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Add {i} and {i + 2}."}) + "\n"
                               for i in range(8)))
    command = [str(c) for c in driver(ixt_checkpoint, judge_endpoint, prompts, out, "--chat", "--samples-per-prompt",
                                      2, "--temperature", 1.0)]
    first = subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    lines, deadline = [], time.monotonic() + 180
    for line in first.stdout:
        lines.append(line)
        if "round 1: annotate done" in line:
            os.killpg(first.pid, signal.SIGKILL)
            break
        assert time.monotonic() < deadline, "".join(lines)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "".join(lines)
    sampled = (out / "round_1" / "samples.jsonl").stat().st_mtime_ns
    second = run_driver(command)
    assert second.returncode == 0, second.stdout + second.stderr
    return out, "".join(lines), second.stdout + second.stderr, sampled


def test_resume_after_annotation_trains_without_sampling_again(chat_run):
    out, first, second, sampled = chat_run
    round_ = out / "round_1"
    assert "round 1: train ..." not in first  # killed before training started
    assert "round 1: sample: done before" in second and "round 1: annotate: done before" in second
    assert "Generated" not in second and "round 1: train done" in second
    assert (round_ / "samples.jsonl").stat().st_mtime_ns == sampled
    assert (round_ / "checkpoint" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    summary = json.loads((round_ / "summary.json").read_text())
    assert summary["training"]["trained"] and summary["training"]["iterations"] == 2
    assert summary["samples"] == 16 and summary["checkpoint"] == str(round_ / "checkpoint")
    assert set(summary["wall_s"]) == {"sample", "annotate", "dataset", "train"}


def test_chat_round_trains_each_sample_with_the_feedback_it_earned(chat_run, ixt_corpus):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_ixt.format.indexed_io import read_side_file
    from megatron_ixt.format.prefixes import prefix_token_ids
    from megatron_ixt.config.schema import TokenizerConfig
    from megatron_ixt.tokenizers.build import tokenizer_from_config
    from megatron_ixt.tokenizers.chat import FEEDBACK

    out = chat_run[0]
    round_ = out / "round_1"
    samples = tasks.read_jsonl(round_ / "samples.jsonl")
    annotated = tasks.read_jsonl(round_ / "annotations.jsonl")
    # Each sample is the conversation [user = its prompt, assistant = what was sampled]; an
    # empty answer has no assistant turn to judge: it is counted, not accepted.
    answered = [s for s in samples if s["output"].strip()]
    assert [s["id"] for s in answered] == [a["id"] for a in annotated]
    for s, a in zip(answered, annotated):
        assert a["messages"][-2:] == [{"role": "user", "content": s["prompt"]},
                                      {"role": "assistant", "content": s["output"]}]
    thresholds = QualityThresholds.from_dict(json.loads((out / "thresholds.json").read_text()))
    levels = [tasks.earned(a, thresholds)[1] for a in annotated]
    assert set(levels) == {2, 5}, levels  # the stand-in's verdicts are mixed

    prefix = str(round_ / "dataset" / "train_messages_document")
    dataset, side = IndexedDataset(prefix), read_side_file(prefix)
    roles = np.fromfile(prefix + ".roles.bin", dtype=np.uint8)
    tokenizer = tokenizer_from_config(TokenizerConfig("SentencePieceTokenizer", ixt_corpus["tokenizer"]))
    assert len(dataset) == len(annotated) == side.shape[0]
    for i, (record, level) in enumerate(zip(annotated, levels)):
        start = int(dataset.index.sequence_pointers[i] // dataset.index.dtype_size)
        ids, marks = dataset[i], roles[start:start + len(dataset[i])]
        expected = prefix_token_ids(tokenizer, "quality", record["feedback"], thresholds)
        # The conditioned variant's own tokens: a new system message holding the feedback ids.
        conditioned = ids[(marks & FEEDBACK) != 0].tolist()
        assert side[i].tolist() == [len(conditioned), level]
        assert any(conditioned[j:j + len(expected)] == expected for j in range(len(conditioned))), (conditioned,
                                                                                                     expected)
        assert tokenizer.detokenize(expected).endswith(f"Quality: {level}/5<|/feedback|>")
    summary = json.loads((round_ / "summary.json").read_text())
    assert summary["accepted"] == levels.count(5) and summary["levels"]["2"] == levels.count(2)
    assert summary["empty_answers"] == len(samples) - len(answered)
    assert summary["accepted_share"] == levels.count(5) / len(samples)


def test_restart_with_other_settings_is_refused(chat_run, ixt_checkpoint, judge_endpoint, tmp_path):
    out = chat_run[0]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "x"}) + "\n")
    proc = run_driver(driver(ixt_checkpoint, judge_endpoint, prompts, out, "--chat", "--mode", "plain"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "mode: 'ixt', now 'plain'" in proc.stderr and "use a new --output-dir" in proc.stderr


def test_filter_round_on_documents_sampled_in_two_array_tasks(tmp_path, ixt_checkpoint, judge_endpoint):
    """--mode filter on a pretrained model's document prompts, sampled and annotated as a
    cluster's two array tasks (--shard I/2) before the start that merges them and trains."""
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "run"
    prompts.write_text("".join(json.dumps({"prompt": f"def f{i}(x):\n    return"}) + "\n" for i in range(6)))
    command = driver(ixt_checkpoint, judge_endpoint, prompts, out, "--mode", "filter", "--samples-per-prompt", 3)
    shards = [subprocess.Popen([str(c) for c in [*command, "--shard", f"{i}/2"]], cwd=REPO, env=child_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    for i, shard in enumerate(shards):
        output = shard.communicate(timeout=240)[0]
        assert shard.returncode == 0, output
        assert f"shard {i}-of-2 sampled and annotated" in output and "round 1: train" not in output
    round_ = out / "round_1"
    assert not (round_ / "samples.jsonl").exists() and not (round_ / "checkpoint").exists()
    parts = [tasks.read_jsonl(round_ / "shards" / f"{i}-of-2.samples.jsonl") for i in range(2)]
    assert [len(p) for p in parts] == [9, 9]

    proc = run_driver(command)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "merged the samples and annotations of 2 parts" in proc.stdout + proc.stderr
    samples = tasks.read_jsonl(round_ / "samples.jsonl")
    assert samples == parts[0] + parts[1]
    assert [s["id"] for s in samples] == [f"line{i + 1}/r1/s{k}" for i in range(6) for k in range(3)]
    annotated = tasks.read_jsonl(round_ / "annotations.jsonl")
    assert [a["text"] for a in annotated] == [s["prompt"] + s["output"] for s in samples]
    accepted = [a for a in annotated if a["feedback"]["score"] == 9]
    train = tasks.read_jsonl(round_ / "train.jsonl")
    assert 0 < len(accepted) < len(annotated)
    assert train == [{k: v for k, v in a.items() if k != "feedback"} for a in accepted]
    meta = json.loads((round_ / "dataset" / "train_text_document.meta.json").read_text())
    assert meta["counts"]["documents"] == len(accepted) and meta["counts"]["prefix_tokens"] == 0
    assert meta["append_eod"] and meta["template"]["name"] == "none"
    summary = json.loads((round_ / "summary.json").read_text())
    assert summary["accepted"] == len(accepted) and summary["training"]["trained"]
    assert summary["target_feedback"] is None


def test_bad_prompt_is_named_before_sampling(tmp_path, ixt_checkpoint):
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "run"
    prompts.write_text(json.dumps({"prompt": "What is 2 + 2?", "reference_answer": 4}) + "\n"
                       + json.dumps({"prompt": "What is 3 + 3?", "domain": "math"}) + "\n")
    proc = run_driver([sys.executable, REPO / "tools" / "online_ixt.py", "--load", ixt_checkpoint.path,
                       "--prompts", prompts, "--output-dir", out, "--critic", "math", "--train-iters", 1], timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{prompts}:2: field 'reference_answer'" in proc.stderr and "math critic" in proc.stderr
    assert not out.exists()


def test_tasks_what_each_mode_trains_on():
    good = {"id": "a", "text": "1 + 1 = 2", "feedback": {"score": 9.2}}
    bad = {"id": "b", "text": "1 + 1 = 3", "feedback": {"score": 2.0}}
    unjudged = {"id": "c", "text": "?"}
    records = [good, bad, unjudged]
    assert tasks.training_records(records, "ixt") == records
    assert tasks.training_records(records, "filter") == [{"id": "a", "text": "1 + 1 = 2"}]
    assert tasks.training_records(records, "plain") == [{"id": "a", "text": "1 + 1 = 2"},
                                                                   {"id": "b", "text": "1 + 1 = 3"},
                                                                   {"id": "c", "text": "?"}]
    # Quantile cut points come from round 1's scores and are kept as given ones.
    cuts = tasks.round_thresholds([{"feedback": {"score": s}} for s in range(11)], "quantile")
    assert cuts.mode == "given" and cuts.cut_points == (0.2, 0.4, 0.6, 0.8)
    assert QualityThresholds.parse("0.1,0.3,0.5,0.95").level(9.6) == 5
    # A pass/fail verifier's quantile cuts tie (70 wrong answers at 2.6, 30 right at 9.8):
    # the levels put wrong answers at 4, but acceptance is the critic's own level 4-5.
    tied = tasks.round_thresholds([{"feedback": {"score": s}} for s in [2.6] * 70 + [9.8] * 30], "quantile")
    assert tasks.earned(bad | {"feedback": {"score": 2.6}}, tied)[1] == 4
    assert not tasks.is_accepted(bad | {"feedback": {"score": 2.6}}) and tasks.is_accepted(good)
    # ... and reach preprocessing as its --quality-thresholds.
    from megatron_ixt.online.driver import thresholds_flag
    from megatron_ixt.preprocess.config import parse_config

    flags = ["--input", "x.jsonl", "--output-prefix", "x", "--tokenizer-type", "NullTokenizer", "--vocab-size", "8"]
    assert parse_config([*flags, "--quality-thresholds", thresholds_flag(cuts)]).quality_thresholds == "0.2,0.4,0.6,0.8"
    assert thresholds_flag(QualityThresholds.fixed()) == "fixed"
    with pytest.raises(SystemExit):
        parse_config([*flags, "--quality-thresholds", "0.5,0.4,0.6,0.8"])


def test_tasks_check_what_each_critic_needs(tmp_path):
    from megatron_ixt.format.errors import DocumentError

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "def f():", "domain": "code", "tests": "assert f() == 1"}) + "\n")
    with pytest.raises(DocumentError, match=r"p.jsonl:1: field 'entry_point'"):
        tasks.read_tasks(str(path), "auto")
    path.write_text("".join(json.dumps({"id": "x", "prompt": p}) + "\n" for p in ("a", "b")))
    with pytest.raises(DocumentError, match=r"p.jsonl:2: field 'id'.*line 1 has the same id"):
        tasks.read_tasks(str(path), "text")
    path.write_text(json.dumps({"prompt": "essay", "domain": "math"}) + "\n")
    assert len(tasks.read_tasks(str(path), "text")) == 1  # the text critic needs nothing
    with pytest.raises(DocumentError, match="reference_answer"):
        tasks.read_tasks(str(path), "auto")  # auto sends domain math to the math critic
