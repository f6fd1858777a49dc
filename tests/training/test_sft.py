"""SFT end to end (pretrain_ixt.py --sft --load CKPT --finetune) on real conversations.

* The tiny IXT model (``ixt_checkpoint``, pretrained here at TP=2) fine-tuned on the GSM8K
  conversations of ``sft_corpus`` at TP=2 and at PP=2 with virtual stages: the loss on the
  assistant tokens falls, both layouts give the same losses,
  and the log shows the share of tokens in the loss; ``tools/evaluate_conditioning.py --chat``
  then scores its assistant turns with each feedback in the system message.
* SmolLM2-135M-Instruct imported from Hugging Face, fine-tuned on the same conversations in
  its own chat template (ChatML), exported: ``tools/generate.py --chat`` and transformers'
  ``apply_chat_template`` + ``generate`` give the same greedy answer under the same feedback.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.launch import read_metrics, run_python, run_torchrun

LAYOUTS = {"tp2": ["--tensor-model-parallel-size", 2],
           "pp2-vpp": ["--pipeline-model-parallel-size", 2, "--num-layers-per-virtual-pipeline-stage", 1]}


def _sft(load, data, tokenizer_flags, out, layout_flags, *extra, iters=16):
    return run_torchrun(2, "pretrain_ixt.py", [
        "--load", load, "--finetune", "--sft", "--data-path", data, *tokenizer_flags, *layout_flags,
        "--train-iters", iters, "--lr-warmup-iters", 0, "--lr-decay-style", "constant", "--eval-interval", 0,
        "--split", "100,0,0", "--data-cache-path", out / "cache", "--log-file", out / "log.jsonl",
        "--log-interval", 4, *extra], timeout=600)


@pytest.mark.slow
def test_sft_from_a_pretrained_checkpoint_at_two_layouts(ixt_checkpoint, sft_corpus, tmp_path):
    """The same SFT at TP=2 and at PP=2 with virtual stages: the loss on the assistant tokens
    falls, and both layouts give the same losses (megatron-core's per-token loss reduction)."""
    losses = {}
    for layout, flags in LAYOUTS.items():
        out = tmp_path / layout
        proc = _sft(ixt_checkpoint.path, sft_corpus["prefix"],
                    ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", sft_corpus["tokenizer"]],
                    out, flags, "--config", "examples/configs/tiny.yaml", "--seq-length", 256,
                    "--micro-batch-size", 2, "--global-batch-size", 8, "--lr", 3e-3, "--ixt-feedback-dropout", 0.1,
                    "--save", out / "sft")
        assert "weights only" in proc.stdout
        assert "tokens in loss" in proc.stdout + proc.stderr
        losses[layout] = [row["lm loss"] for row in read_metrics(out / "log.jsonl")[0]]
        print(f"SFT at {layout}: lm loss {' '.join(f'{x:.4f}' for x in losses[layout])}")
        assert len(losses[layout]) == 16 and all(math.isfinite(x) for x in losses[layout])
        assert sum(losses[layout][-4:]) / 4 < sum(losses[layout][:4]) / 4 - 0.2
        assert (out / "sft" / "iter_0000016").is_dir()
    assert losses["pp2-vpp"] == pytest.approx(losses["tp2"], abs=1e-4)

    # The SFT model's assistant-turn losses with each feedback in the system message.
    result = tmp_path / "conditioning.json"
    proc = run_torchrun(2, "tools/evaluate_conditioning.py", [
        "--load", tmp_path / "tp2" / "sft", "--tensor-model-parallel-size", 2, "--chat", "--input",
        sft_corpus["jsonl"], "--max-docs", 24, "--output", result])
    summary = json.loads(result.read_text())["summary"]
    print(proc.stdout[proc.stdout.index("condition "):])
    # Conversations whose assistant turns start beyond the 256 tokens are skipped and counted.
    assert summary["documents"] >= 4 and summary["documents"] + summary["skipped_prefix_too_long"] == 24
    assert all(math.isfinite(summary[c]["loss"]) for c in ("none", "own", "best", "worst"))
    assert summary["none"]["loss"] != summary["best"]["loss"]  # the feedback is in the context


@pytest.mark.slow
def test_sft_smollm2_then_chat_equals_transformers(smollm2, smollm2_checkpoint, tmp_path):
    from transformers import AutoTokenizer

    from tests.real_model import hf_model

    tokenizer_json = smollm2_checkpoint / "tokenizer" / "tokenizer.json"
    from tests.conversations import gsm_conversations

    raw = tmp_path / "conversations.jsonl"
    rows = gsm_conversations()[:24]
    for i, row in enumerate(rows):
        if i % 2:
            row["feedback"] = {"score": 9.5 if i % 4 == 1 else 1.5, "critique": "Checked by hand."}
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_python("tools/preprocess_data.py", [
        "--sft", "--input", raw, "--output-prefix", tmp_path / "sft", "--tokenizer-type", "HuggingFaceTokenizer",
        "--tokenizer-model", tokenizer_json, "--seq-length", 256, "--prefix-template", "quality"])
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "sft_messages_document.meta.json").read_text())
    assert meta["sft"]["chat_template"]["origin"] == "tokenizer"  # SmolLM2's own ChatML

    _sft(smollm2_checkpoint, tmp_path / "sft_messages_document",
         ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tokenizer_json], tmp_path, [],
         "--config", smollm2_checkpoint / "model.yaml", "--seq-length", 256, "--micro-batch-size", 1,
         "--global-batch-size", 2, "--lr", 1e-5, "--save", tmp_path / "ckpt", iters=3)
    losses = [row["lm loss"] for row in read_metrics(tmp_path / "log.jsonl")[0]]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)

    hf = tmp_path / "hf"
    proc = run_python("tools/convert_checkpoint.py", ["--to", "hf", "--load", tmp_path / "ckpt", "--output", hf])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    question = "What is 12 * 7?"
    proc = run_torchrun(1, "tools/generate.py", ["--load", tmp_path / "ckpt", "--chat", "--feedback-level", 5,
                                                 "--prefix-template", "quality", "--greedy", "--max-new-tokens", 12,
                                                 "--prompt", question], timeout=600)
    ours = proc.stdout[proc.stdout.index("[output] ") + len("[output] "):].rstrip("\n")

    tokenizer = AutoTokenizer.from_pretrained(hf)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(smollm2).chat_template  # the export carries it
    messages = [{"role": "system", "content": "<|feedback|>Quality: 5/5<|/feedback|>"},
                {"role": "user", "content": question}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        generated = hf_model(hf).generate(**ids, max_new_tokens=12, do_sample=False)
    theirs = tokenizer.decode(generated[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"SmolLM2 after SFT, --chat under quality 5: generate.py {ours!r}, transformers {theirs!r}")
    assert ours == theirs and ours.strip()
