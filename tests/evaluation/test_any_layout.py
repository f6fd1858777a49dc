"""A checkpoint trained at one layout is used at any other: the session's tiny model, trained
at TP=2 (its 1,000 ids padded to 1,152 rows), generates and evaluates at TP=1 and at PP=2
(1,056 rows: re-padded at load) exactly as at TP=2.

Generation (``evaluation/generation.py``) gives the same greedy tokens at every layout with
the KV cache, batched (prompts of different lengths, right- and left-aligned) or one prompt at
a time, as without a cache (the whole context through the model for every token); seeded
sampling gives the same tokens batched and one at a time, and at every layout.

Evaluation scores the tokenizer's vocabulary only (``evaluation.engine.vocabulary_losses``),
so the losses agree to float32 reduction order (TP=2 splits the sums of two layers in halves).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.launch import run_torchrun

LAYOUTS = {"tp2": (2, ["--tensor-model-parallel-size", 2]), "tp1": (1, []),
           "pp2": (2, ["--pipeline-model-parallel-size", 2])}
LOSS_ATOL = 1e-5
LOGIT_ATOL = 2e-5


@pytest.mark.slow
def test_a_tp2_model_generates_and_evaluates_alike_at_tp1_and_pp2(ixt_checkpoint, ixt_corpus, tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    lines = open(ixt_corpus["jsonl"]).read().splitlines()
    heldout.write_text("\n".join(lines[:6]) + "\n")
    engine, losses = {}, {}
    for name, (nproc, flags) in LAYOUTS.items():
        out, result = tmp_path / f"{name}.pt", tmp_path / f"{name}.json"
        runs = [("tests/scripts/engine_outputs.py", ["--load", ixt_checkpoint.path, *flags, "--out", out,
                                                     "--random-length", 32, "--max-new-tokens", 16,
                                                     "--generation-prompts", 5]),
                ("tools/evaluate_conditioning.py", ["--load", ixt_checkpoint.path, *flags, "--input", heldout,
                                                    # short prefixes: tiny.yaml's 64 tokens
                                                    "--prefix-template", "quality", "--output", result])]
        # A one-process layout leaves a core free: its two runs go side by side.
        with ThreadPoolExecutor(2 if nproc == 1 else 1) as pool:
            list(pool.map(lambda run, nproc=nproc: run_torchrun(nproc, *run), runs))
        engine[name] = torch.load(out)
        losses[name] = [row["loss"] for row in json.loads(result.read_text())["documents"]]

    reference = engine["tp2"]
    assert len(reference["generated_ids"]) == 16 and losses["tp2"]
    for name, outputs in engine.items():
        ways = outputs["generations"]
        assert all(len(ids) == 16 for ids in ways["uncached"]), ways["uncached"]  # no early end: a real test
        for way in ("batched", "left_aligned", "one_by_one"):
            assert ways[way] == ways["uncached"], (name, way)
        assert ways["sampled"] == ways["sampled_one_by_one"], name
        assert ways["sampled"] != ways["batched"], name  # sampling did sample
        assert ways == reference["generations"], name
    vocab = reference["vocab_size"]
    for name in ("tp1", "pp2"):
        assert engine[name]["generated_ids"] == reference["generated_ids"], name
        diff = (engine[name]["logits"][..., :vocab] - reference["logits"][..., :vocab]).abs().max().item()
        loss_diff = max(abs(ours[c] - theirs[c]) for ours, theirs in zip(losses[name], losses["tp2"]) for c in ours)
        print(f"{name} against tp2: same {len(reference['generated_ids'])} greedy tokens, max |logit difference| "
              f"{diff:.3g}, max |loss difference| {loss_diff:.3g} over {len(losses[name])} documents x 4 conditions")
        assert diff < LOGIT_ATOL and loss_diff < LOSS_ATOL
        assert engine[name]["logits"].shape[-1] == 1056 and reference["logits"].shape[-1] == 1152
