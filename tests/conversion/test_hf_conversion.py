"""Hugging Face export and import (tools/convert_checkpoint.py), Megatron-LM checkpoints.

Export: the session's tiny Llama-style model trained at TP=2 on a real IXT corpus, exported,
loaded with `transformers.AutoModelForCausalLM.from_pretrained` (offline): its logits equal
this project's inference engine at TP=2 and at PP=2 (a resharded load), and greedy generation
under the best feedback is identical token for token.

Tolerance of the logit comparison: both sides compute the same float32 math; only the order of
the reductions differs (TP splits the hidden-size sums of linear_proj / linear_fc2 in two and
adds the halves; Hugging Face's SDPA attention kernel against megatron-core's). Measured
differences are ~3e-7 on logits of magnitude ~1-5 (a few float32 ulps); 2e-5 leaves a factor
of ~50 and is still four orders of magnitude below any real mapping error (a swapped head,
gate/up or RoPE half changes logits by O(0.1)).

Import: a tiny random Qwen3 (QK-norm, head_dim apart from hidden / heads) built with
`transformers` (no hub), imported at TP=2 with the delimiters appended to its tokenizer;
pretrain_ixt.py --load continues from it and its first-iteration loss equals the Hugging Face
model's loss on the same batch (tests/conversion/test_families.py has every family).
"""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

from tests.launch import TINY, read_metrics, run_python, run_torchrun

transformers = pytest.importorskip("transformers", reason="pip install '.[dev]' (transformers, safetensors)")

LOGIT_ATOL = 2e-5
LAYOUTS = {"tp2": ["--tensor-model-parallel-size", 2], "pp2": ["--pipeline-model-parallel-size", 2]}


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_export_matches_the_engine(layout, ixt_corpus, ixt_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megatron_ixt.format.prefixes import prefix_token_ids
    from megatron_ixt.tokenizers.build import build_tokenizer

    ckpt = ixt_checkpoint.path  # trained at TP=2: the engine runs it at TP=2 and, resharded, at PP=2
    out = tmp_path / "hf"
    proc = run_python("tools/convert_checkpoint.py", ["--to", "hf", "--load", ckpt, "--output", out])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors",
                                       "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    run_torchrun(2, "tests/scripts/engine_outputs.py", ["--load", ckpt, *LAYOUTS[layout], "--out", tmp_path / "engine.pt"])
    engine = torch.load(tmp_path / "engine.pt")

    config = json.loads((out / "config.json").read_text())
    tokenizer = build_tokenizer("SentencePieceTokenizer", ixt_corpus["tokenizer"])
    assert config["vocab_size"] == tokenizer.vocab_size == 1000  # the padding rows are cut
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["tie_word_embeddings"]) == (4, 2, False)

    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, dtype=torch.float32).eval()
    vocab = engine["vocab_size"]
    with torch.no_grad():
        hf_logits = model(engine["tokens"]).logits
        hf_context = model(torch.tensor([engine["context"]])).logits
    diff = (hf_logits - engine["logits"][..., :vocab]).abs().max().item()
    diff_context = (hf_context - engine["context_logits"][..., :vocab]).abs().max().item()
    print(f"{layout}: max |logit difference| {diff:.3g} (random tokens), {diff_context:.3g} (feedback context)")
    assert diff < LOGIT_ATOL and diff_context < LOGIT_ATOL

    # Greedy under the best feedback: [eod] <|feedback|> Quality: 5/5 <|/feedback|> prompt.
    context = torch.tensor([engine["context"]])
    generation = transformers.GenerationConfig.from_pretrained(out)  # eos = eod, delimiters suppressed
    generation.update(max_new_tokens=len(engine["generated_ids"]), do_sample=False)
    hf_ids = model.generate(context, generation_config=generation)[0, context.shape[1]:].tolist()
    print(f"{layout}: greedy under the best feedback: engine {engine['generated_ids']}, Hugging Face {hf_ids}")
    assert len(engine["generated_ids"]) > 0
    assert hf_ids[:len(engine["generated_ids"])] == engine["generated_ids"]

    # The exported tokenizer: same ids as training, delimiters as special tokens.
    hf_tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert hf_tokenizer.convert_tokens_to_ids(["<|feedback|>", "<|/feedback|>"]) == [
        tokenizer.feedback_open_id, tokenizer.feedback_close_id]
    assert hf_tokenizer.eos_token_id == tokenizer.eod
    prompt = "<|feedback|>Quality: 5/5<|/feedback|>def fibonacci(n):\n"
    assert hf_tokenizer(prompt, add_special_tokens=False)["input_ids"] == engine["context"][1:] == [
        *prefix_token_ids(tokenizer, "quality", 5), *tokenizer.tokenize("def fibonacci(n):\n")]
    texts = [json.loads(line)["text"] for line in open(ixt_corpus["jsonl"])][:60]
    for text in texts:
        assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == tokenizer.tokenize(text)


def test_architectures_without_a_llama_equivalent_are_refused():
    from megatron_ixt.config.schema import ModelConfig
    from megatron_ixt.conversion import ConversionError
    from megatron_ixt.conversion.families import check_exportable

    with pytest.raises(ConversionError) as error:
        check_exportable(ModelConfig())  # Megatron-LM's defaults: GPT-2 style
    message = str(error.value)
    for setting in ("--normalization LayerNorm", "--swiglu", "--disable-bias-linear",
                    "--position-embedding-type learned_absolute"):
        assert setting in message, message
    llama = ModelConfig(normalization="RMSNorm", swiglu=True, disable_bias_linear=True,
                        position_embedding_type="rope", rotary_percent=0.5)
    with pytest.raises(ConversionError, match="--rotary-percent 0.5"):
        check_exportable(llama)
    llama.rotary_percent = 1.0
    check_exportable(llama)


@pytest.mark.slow
def test_export_refuses_a_gpt2_style_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    run_torchrun(1, "pretrain_ixt.py", ["--mock-data", "--num-layers", 2, "--hidden-size", 32, "--num-attention-heads", 2,
                                        "--seq-length", 32, "--vocab-size", 61, "--make-vocab-size-divisible-by", 8,
                                        "--train-iters", 1, "--eval-interval", 0, "--lr-warmup-iters", 0,
                                        "--micro-batch-size", 1, "--transformer-impl", "local", "--save", ckpt])
    proc = run_python("tools/convert_checkpoint.py", ["--to", "hf", "--load", ckpt, "--output", tmp_path / "hf"])
    assert proc.returncode == 1
    assert "no exact Hugging Face equivalent: --normalization LayerNorm" in proc.stderr, proc.stderr
    assert not (tmp_path / "hf").exists()


# -- import ------------------------------------------------------------------------------


def _tiny_qwen3(folder, texts):
    """A random Qwen3 (GQA, QK-norm, head_dim 32 where hidden / heads is 16, untied) and a
    byte-level BPE tokenizer.json without delimiters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=192,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                         max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, eos_token_id=0)
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():  # the init is tiny (std 0.02): spread the logits, and the QK-norm weights
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(5)
            elif "q_norm" in name or "k_norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=True)
    return model


@pytest.mark.slow
def test_import_then_resume_with_ixt(ixt_corpus, tmp_path):
    from megatron_ixt.config.cli import parse_config
    from megatron_ixt.data.datasets import build_datasets
    from megatron_ixt.tokenizers.build import build_tokenizer

    texts = [json.loads(line)["text"] for line in open(ixt_corpus["jsonl"])]
    hf_dir = tmp_path / "hf"
    hf_model = _tiny_qwen3(hf_dir, texts[:300]).eval()
    ckpt = tmp_path / "ckpt"
    proc = run_python("tools/convert_checkpoint.py", ["--from", "hf", "--input", hf_dir, "--save", ckpt,
                                                      "--tensor-model-parallel-size", 2, "--seq-length", 128])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout[proc.stdout.rindex("\n{\n") + 1:])  # the printed summary
    assert summary["delimiters"] == "appended" and summary["feedback_ids"] == [1000, 1001]
    assert summary["padded_vocab_size"] == 1024  # 1002 ids, padded to a multiple of 128 x TP 2

    # The annotated corpus with the imported model's tokenizer (delimiters appended).
    tokenizer_json = ckpt / "tokenizer" / "tokenizer.json"
    proc = run_python("tools/preprocess_data.py", ["--input", ixt_corpus["jsonl"], "--output-prefix", tmp_path / "ds",
                                                   "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
                                                   tokenizer_json, "--append-eod", "--prefix-template", "critique"])
    assert proc.returncode == 0, proc.stderr
    flags = ["--config", ckpt / "model.yaml", "--load", ckpt, "--data-path", tmp_path / "ds_text_document",
             "--micro-batch-size", 4, "--global-batch-size", 16, "--train-iters", 2, "--lr", 1e-4,
             "--lr-warmup-iters", 0, "--eval-interval", 0, "--split", "100,0,0", "--seq-length", 128,
             "--data-cache-path", tmp_path / "cache", "--log-file", tmp_path / "log.jsonl", "--log-interval", 1]
    proc = run_torchrun(2, "pretrain_ixt.py", flags)
    assert "weights only" in proc.stdout
    rows, _ = read_metrics(tmp_path / "log.jsonl")
    first_loss = rows[0]["lm loss"]
    assert rows[0]["iteration"] == 1

    # The same first global batch, through the Hugging Face model with the same new rows.
    cfg, _ = parse_config([str(f) for f in flags])
    tokenizer = build_tokenizer("HuggingFaceTokenizer", str(tokenizer_json))
    train, _, _ = build_datasets(cfg, tokenizer)
    batch = [train[i] for i in range(16)]
    tokens = torch.stack([b["tokens"] for b in batch])
    labels = torch.stack([b["labels"] for b in batch])
    mask = torch.stack([b["loss_mask"] for b in batch]).float()
    rows_before = hf_model.get_input_embeddings().weight.shape[0]
    means = [hf_model.get_input_embeddings().weight.mean(0), hf_model.lm_head.weight.mean(0)]
    hf_model.resize_token_embeddings(1024, mean_resizing=False)
    with torch.no_grad():  # the delimiters start as the mean row; the padding rows are zero
        hf_model.get_input_embeddings().weight[rows_before:1002] = means[0]
        hf_model.lm_head.weight[rows_before:1002] = means[1]
        hf_model.get_input_embeddings().weight[1002:] = 0
        hf_model.lm_head.weight[1002:] = 0
        logits = hf_model(tokens).logits
    losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    hf_loss = float((losses * mask.reshape(-1)).sum() / mask.sum())
    print(f"first-iteration loss: pretrain_ixt.py {first_loss:.8f}, Hugging Face {hf_loss:.8f}, "
          f"difference {abs(first_loss - hf_loss):.3g}")
    assert abs(first_loss - hf_loss) < 1e-5
    assert (tokens == 1000).any() and (tokens == 1001).any()  # the batch has feedback prefixes


# -- Megatron-LM checkpoints ---------------------------------------------------------------


def _as_megatron_lm(ckpt, iteration):
    """Rewrite common.pt the way Megatron-LM writes it: its argparse `args` (with an enum and
    a dtype inside, as Megatron-LM's have), `iteration`, `checkpoint_version`; no `config`."""
    from megatron.core.transformer.enums import AttnBackend

    path = ckpt / f"iter_{iteration:07d}" / "common.pt"
    ours = torch.load(path, weights_only=False)
    m, p = ours["config"]["model"], ours["config"]["parallel"]
    args = argparse.Namespace(
        num_layers=m["num_layers"], hidden_size=m["hidden_size"], ffn_hidden_size=m["ffn_hidden_size"],
        num_attention_heads=m["num_attention_heads"], group_query_attention=True, num_query_groups=m["num_query_groups"],
        kv_channels=m["hidden_size"] // m["num_attention_heads"], swiglu=True, normalization="RMSNorm",
        position_embedding_type="rope", rotary_base=10000, rotary_percent=1.0, norm_epsilon=1e-5,
        untie_embeddings_and_output_weights=True, add_bias_linear=False, padded_vocab_size=ours["padded_vocab_size"],
        tensor_model_parallel_size=p["tensor_model_parallel_size"],
        pipeline_model_parallel_size=p["pipeline_model_parallel_size"], params_dtype=torch.float32,
        attention_backend=AttnBackend.auto, ckpt_format="torch_dist", tokenizer_type="NullTokenizer", vocab_size=509)
    torch.save({"args": args, "iteration": iteration, "checkpoint_version": 3.0,
                "opt_param_scheduler": ours["opt_param_scheduler"], "num_floating_point_operations_so_far": 0}, path)


@pytest.mark.slow
def test_megatron_lm_checkpoint(tmp_path, mock_checkpoint):
    base = ["--config", TINY, "--mock-data", "--eval-interval", 0, "--lr-warmup-iters", 0, "--log-interval", 1]
    ckpt = mock_checkpoint.copy(tmp_path / "ckpt")  # saved at TP=2; read here in one process
    reference = tmp_path / "ref.jsonl"
    run_torchrun(1, "pretrain_ixt.py", [*base, "--train-iters", 1, "--load", ckpt, "--finetune", "--log-file", reference])
    _as_megatron_lm(ckpt, 6)

    # Same shapes: the weights load under --finetune, and train exactly as before.
    log = tmp_path / "mlm.jsonl"
    proc = run_torchrun(1, "pretrain_ixt.py", [*base, "--train-iters", 1, "--load", ckpt, "--finetune", "--log-file", log])
    assert "written by megatron-lm" in proc.stdout
    assert read_metrics(log)[0][0]["lm loss"] == read_metrics(reference)[0][0]["lm loss"]
    # Without --finetune, or with another shape: a message naming what differs.
    proc = run_torchrun(1, "pretrain_ixt.py", [*base, "--train-iters", 1, "--load", ckpt], check=False)
    assert proc.returncode != 0 and "written by Megatron-LM: load its weights with --finetune" in proc.stderr + proc.stdout
    proc = run_torchrun(1, "pretrain_ixt.py", [*base, "--train-iters", 1, "--load", ckpt, "--finetune",
                                               "--ffn-hidden-size", 128, "--num-layers", 2], check=False)
    output = proc.stderr + proc.stdout
    assert proc.returncode != 0 and "KeyError" not in output
    assert "--num-layers: checkpoint 4, configured 2; --ffn-hidden-size: checkpoint 192, configured 128" in output, output
    # The inference tools say what it is instead of a bare KeyError: 'config'.
    proc = run_python("tools/generate.py", ["--load", ckpt, "--prompt", "1 2 3"])
    assert proc.returncode == 2 and "a Megatron-LM checkpoint" in proc.stderr, proc.stderr
