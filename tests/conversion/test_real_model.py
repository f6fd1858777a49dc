"""A real pretrained model through the framework: SmolLM2-135M-Instruct (tests/real_model.py).

* Import at TP=1 is exact against transformers, and tools/generate.py's greedy output equals
  ``model.generate`` at TP=1 and PP=2: the checkpoint records that the model's documents start
  with nothing (its tokenizer adds no BOS), and generation follows it.
* The 2-layer copy (the real shapes: 9 heads, 3 KV heads, tied embeddings) imported at TP=3
  loads at TP=3, TP=1 and PP=2 (the vocabulary is re-padded from 49,536 rows to 49,280), with
  logits equal to transformers'.
* Continued pretraining with critique prefixes (``--finetune``) at PP=2 on real text, then
  export: transformers' logits of the exported folder equal ours.
* Layouts the model cannot take (9 heads at TP=2, 2 layers at PP=4) are refused at import and
  at every entry point: exit 2, one line, nothing written.

Tolerance: both sides compute float32 math in a different order (SDPA kernels, TP's split
sums); measured differences are ~1e-5 on logits of magnitude ~10-30, a mapping error is O(1).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.launch import read_metrics, run_python, run_torchrun
from tests.real_model import PROMPT, hf_model

LOGIT_ATOL = 1e-4
HF_ROWS = 49152  # SmolLM2's vocabulary; ours adds the two feedback delimiters (49152, 49153)
NEW_TOKENS = 12
LAYOUTS = {"tp1": (1, []), "pp2": (2, ["--pipeline-model-parallel-size", 2]),
           "tp3": (3, ["--tensor-model-parallel-size", 3])}


def _import(folder, save, *flags) -> dict:
    proc = run_python("tools/convert_checkpoint.py", ["--from", "hf", "--input", folder, "--save", save, *flags])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout[proc.stdout.rindex("\n{\n") + 1:])  # the printed summary


def _engine(ckpt, layout: str, out, **options) -> dict:
    """tests/scripts/engine_outputs.py at ``layout``: logits of 2 x 16 random ids (below
    SmolLM2's rows) and of the prompt without feedback, and its greedy continuation."""
    nproc, flags = LAYOUTS[layout]
    args = ["--load", ckpt, *flags, "--out", out, "--prompt", options.get("prompt", PROMPT), "--no-feedback",
            "--random-length", 16, "--random-high", HF_ROWS, "--max-new-tokens", options.get("new_tokens", 0)]
    run_torchrun(nproc, "tests/scripts/engine_outputs.py", args, timeout=600)
    return torch.load(out)


def _max_logit_difference(model, engine: dict) -> float:
    with torch.no_grad():
        ours = [engine["logits"], engine["context_logits"]]
        theirs = [model(engine["tokens"]).logits, model(torch.tensor([engine["context"]])).logits]
    return max((t - o[..., :t.shape[-1]]).abs().max().item() for t, o in zip(theirs, ours))


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory, smollm2_2layer):
    """The 2-layer copy imported at TP=1."""
    ckpt = tmp_path_factory.mktemp("smollm2_small") / "ckpt"
    _import(smollm2_2layer, ckpt)
    return ckpt


@pytest.mark.slow
def test_import_at_tp1_is_exact(smollm2, smollm2_checkpoint, tmp_path):
    engine = _engine(smollm2_checkpoint, "tp1", tmp_path / "engine.pt")
    assert engine["document_start"] == "none"  # SmolLM2's tokenizer adds no BOS before a text
    from transformers import AutoTokenizer

    assert engine["context"] == AutoTokenizer.from_pretrained(smollm2)(PROMPT)["input_ids"]
    model = hf_model(smollm2)
    diff = _max_logit_difference(model, engine)
    print(f"SmolLM2-135M imported at TP=1: max |logit difference| against transformers {diff:.3g}")
    assert diff < LOGIT_ATOL


BATCH_PROMPTS = [PROMPT, "def add(a, b):\n", "Once upon a time, in a land far away, there lived a", "1, 2, 3, 4,",
                 "The quick brown fox", "import numpy as np\nimport torch\n\ndef main():\n    x =",
                 "Q: What is 7 * 8?\nA:", "Hello"]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp1", "pp2"])
def test_generate_equals_transformers(layout, smollm2, smollm2_checkpoint, tmp_path):
    """tools/generate.py decodes 8 prompts of different lengths in one batch with its KV cache;
    each answer equals transformers' greedy ``generate`` of that prompt alone (transformers' own
    padded batches may differ from its unbatched output)."""
    from transformers import AutoTokenizer

    nproc, flags = LAYOUTS[layout]
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(BATCH_PROMPTS)))
    run_torchrun(nproc, "tools/generate.py", ["--load", smollm2_checkpoint, *flags, "--prompts-file", prompts,
                                              "--output", out, "--batch-size", 8, "--no-feedback", "--greedy",
                                              "--max-new-tokens", NEW_TOKENS], timeout=600)
    ours = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in ours] == list(range(len(BATCH_PROMPTS)))  # input order
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = hf_model(smollm2)
    for row in ours:
        ids = tokenizer(row["prompt"], return_tensors="pt")
        with torch.no_grad():
            generated = model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        theirs = tokenizer.decode(generated[0, ids["input_ids"].shape[1]:])
        print(f"{layout}: generate.py {row['output']!r}, transformers {theirs!r}")
        assert row["output"] == theirs
    assert ours[0]["output"].startswith(" Paris")


@pytest.mark.slow
def test_import_at_tp3_loads_at_every_layout(smollm2_2layer, tmp_path):
    summary = _import(smollm2_2layer, tmp_path / "ckpt", "--tensor-model-parallel-size", 3)
    assert summary["padded_vocab_size"] == 49536  # 49,154 ids padded to a multiple of 128 x 3
    model = hf_model(smollm2_2layer)
    for layout in ("tp3", "tp1", "pp2"):  # TP=1 and PP=2 re-pad to 49,280 rows
        diff = _max_logit_difference(model, _engine(tmp_path / "ckpt", layout, tmp_path / f"{layout}.pt"))
        print(f"2-layer SmolLM2 imported at TP=3, run at {layout}: max |logit difference| {diff:.3g}")
        assert diff < LOGIT_ATOL


@pytest.mark.slow
def test_continued_pretraining_at_pp2_then_export(small_checkpoint, ixt_corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    # The annotated corpus in the model's own tokenizer (the import appended the delimiters).
    proc = run_python("tools/preprocess_data.py", [
        "--input", ixt_corpus["jsonl"], "--output-prefix", tmp_path / "ds", "--tokenizer-type", "HuggingFaceTokenizer",
        "--tokenizer-model", small_checkpoint / "tokenizer" / "tokenizer.json", "--append-eod",
        "--prefix-template", "critique"])
    assert proc.returncode == 0, proc.stderr
    cpt = tmp_path / "cpt"
    proc = run_torchrun(2, "pretrain_ixt.py", [
        "--config", small_checkpoint / "model.yaml", "--load", small_checkpoint, "--finetune", "--save", cpt,
        "--data-path", tmp_path / "ds_text_document", "--pipeline-model-parallel-size", 2, "--seq-length", 256,
        "--micro-batch-size", 2, "--global-batch-size", 4, "--train-iters", 8, "--lr", 3e-4, "--lr-warmup-iters", 0,
        "--lr-decay-style", "constant", "--eval-interval", 0, "--split", "100,0,0",
        "--data-cache-path", tmp_path / "cache", "--log-file", tmp_path / "log.jsonl", "--log-interval", 1],
        timeout=600)
    assert "weights only" in proc.stdout
    losses = [row["lm loss"] for row in read_metrics(tmp_path / "log.jsonl")[0]]
    print(f"continued pretraining at PP=2: lm loss {' '.join(f'{x:.3f}' for x in losses)}")
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1
    saved = (cpt / "iter_0000008" / "config.yaml").read_text()
    assert "document_start: none" in saved  # the model keeps its document start

    hf = tmp_path / "hf"
    proc = run_python("tools/convert_checkpoint.py", ["--to", "hf", "--load", cpt, "--output", hf])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((hf / "config.json").read_text())["vocab_size"] == 49154  # the delimiters, no padding
    exported = AutoModelForCausalLM.from_pretrained(hf, local_files_only=True, dtype=torch.float32).eval()
    diff = _max_logit_difference(exported, _engine(cpt, "tp1", tmp_path / "engine.pt"))
    print(f"exported after continued pretraining: max |logit difference| against ours at TP=1 {diff:.3g}")
    assert diff < LOGIT_ATOL


def _refused(proc, message: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_impossible_layouts_are_refused_before_anything_is_written(smollm2_2layer, small_checkpoint, tmp_path,
                                                                   ixt_corpus):
    heads = "--num-attention-heads (9) is not divisible by --tensor-model-parallel-size (2)"
    for flags, message in ((["--tensor-model-parallel-size", 2], heads),
                           (["--pipeline-model-parallel-size", 4],
                            "--num-layers (2) is not divisible by --pipeline-model-parallel-size (4)")):
        proc = run_python("tools/convert_checkpoint.py",
                          ["--from", "hf", "--input", smollm2_2layer, "--save", tmp_path / "ckpt", *flags])
        _refused(proc, message)
        assert not (tmp_path / "ckpt").exists()
    tp2 = ["--load", small_checkpoint, "--tensor-model-parallel-size", 2]
    _refused(run_python("tools/generate.py", [*tp2, "--prompt", PROMPT]), heads)
    _refused(run_python("tools/evaluate_conditioning.py", [*tp2, "--input", ixt_corpus["jsonl"]]), heads)
    proc = run_python("pretrain_ixt.py", ["--config", small_checkpoint / "model.yaml", *tp2, "--finetune",
                                          "--mock-data", "--save", tmp_path / "cpt"])
    _refused(proc, heads)
    assert not (tmp_path / "cpt").exists()
