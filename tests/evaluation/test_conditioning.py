"""End to end on real text: a corpus in which feedback carries real information (clean
standard-library code is rated 5/5, the same code with half of its characters garbled
1/5) -> tokenizer -> preprocessing -> IXT training at DP=2 -> tools/evaluate_conditioning.py
at PP=2 (a resharded load) shows that the best feedback makes held-out clean text more
likely than the worst; tools/generate.py samples under both."""

from __future__ import annotations

import json
import random
import sysconfig
from pathlib import Path

import pytest

from tests.launch import TINY, read_metrics, run_python, run_torchrun

# Multi-process trainings of a minute or more: `make test-fast` skips them.
pytestmark = pytest.mark.slow


def garble(text: str, rng: random.Random, share: float = 0.5) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz(){}[]=+-*/"
    return "".join(rng.choice(letters) if c.strip() and rng.random() < share else c for c in text)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("conditioning")
    rng = random.Random(0)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    chunks = [p.read_text(errors="replace")[i:i + 800] for p in files[:150] for i in range(0, 3200, 800)]
    chunks = [c for c in chunks if len(c) > 200]
    held_out = [p.read_text(errors="replace")[:800] for p in files[150:180]]
    train = []
    for i, chunk in enumerate(chunks):
        clean = i % 2 == 0
        train.append({"id": i, "text": chunk if clean else garble(chunk, rng),
                      "feedback": {"score": 9.5 if clean else 0.5, "scale": [0, 10]}})
    (root / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in train))
    (root / "heldout.jsonl").write_text("".join(json.dumps({"id": f"h{i}", "text": t, "feedback": {"score": 9.5}}) + "\n"
                                                for i, t in enumerate(held_out)))
    for cmd in (["tools/train_tokenizer.py", "--input", root / "train.jsonl", "--model-prefix", root / "sp",
                 "--vocab-size", 1000, "--model-type", "bpe"],
                ["tools/preprocess_data.py", "--input", root / "train.jsonl", "--output-prefix", root / "ds",
                 "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", root / "sp.model", "--append-eod",
                 "--workers", 2, "--prefix-template", "quality"]):
        proc = run_python(cmd[0], cmd[1:])
        assert proc.returncode == 0, proc.stderr
    ckpt = root / "ckpt"
    run_torchrun(2, "pretrain_ixt.py", [
        "--config", TINY, "--data-path", root / "ds_text_document", "--tokenizer-type", "SentencePieceTokenizer",
        "--tokenizer-model", root / "sp.model", "--seq-length", 128, "--global-batch-size", 16,
        "--train-iters", 300, "--lr-warmup-iters", 10, "--eval-interval", 150, "--eval-iters", 2, "--split", "95,5,0",
        "--reset-attention-mask", "--reset-position-ids", "--ixt-repeat-prefix", "--ixt-feedback-dropout", 0.1,
        "--save", ckpt, "--log-file", root / "metrics.jsonl", "--data-cache-path", root / "cache"], timeout=600)
    return root, ckpt


def test_best_feedback_beats_worst_on_heldout_text(trained):
    root, ckpt = trained
    rows, valid = read_metrics(root / "metrics.jsonl")
    assert rows[-1]["lm loss"] < rows[0]["lm loss"] - 1.0
    assert any("text loss level 5" in v for v in valid)
    out = root / "conditioning.json"
    proc = run_torchrun(2, "tools/evaluate_conditioning.py", [
        "--load", ckpt, "--pipeline-model-parallel-size", 2, "--input", root / "heldout.jsonl",
        "--prefix-template", "quality", "--output", out])
    assert "conditioning gap (worst - best)" in proc.stdout
    summary = json.loads(out.read_text())["summary"]
    print(proc.stdout[proc.stdout.index("condition "):])
    assert summary["documents"] >= 15
    assert summary["best"]["loss"] < summary["worst"]["loss"] - 0.05, summary
    assert summary["share_best_below_worst"] >= 0.9, summary


def test_generate_under_feedback(trained):
    """The feedback reaches the model: the same seeded sampling under level 5 and under level 1
    continues differently (with the prefix ignored, both would be the same draw); neither
    output holds a delimiter."""
    root, ckpt = trained
    outputs = {}
    for level in (5, 1):
        proc = run_torchrun(2, "tools/generate.py", ["--load", ckpt, "--tensor-model-parallel-size", 2,
                                                     "--feedback-level", level, "--prompt", "def ", "--top-k", 20,
                                                     "--seed", 3, "--max-new-tokens", 24])
        outputs[level] = proc.stdout.split("[output]", 1)[1]
        assert "<|feedback|>" not in outputs[level] and "<|/feedback|>" not in outputs[level]
    print(outputs)
    assert outputs[5] != outputs[1]