"""The Hugging Face families users continue from: Llama 3.x, Mistral, Qwen2/2.5, Qwen3.

* Every family, in one process (tests/scripts/hf_families.py): a small random model transformers
  builds with its released models' config fields, saved sharded; imported, its logits equal to
  transformers' on 2,112 tokens (Llama 3's RoPE scaling checked past position 2,000, where it
  moves the logits by O(1)); greedy generation equal; exported sharded as its own model_type,
  transformers' logits of the export equal to ours.
* What cannot be represented is refused, naming the field (and both values where megatron-core
  fixes one); a sliding window is accepted within it and refused past it.
* The safetensors reader and writer: shards, index, dtypes, read back by the library.

Tolerance 1e-4 (fp32): both sides run the same float32 math; measured differences are 0.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.launch import run_python

transformers = pytest.importorskip("transformers", reason="pip install '.[dev]' (transformers, safetensors)")

LOGIT_ATOL = 1e-4
FAMILIES = {"llama3": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3"}


@pytest.mark.slow
def test_every_family_imports_generates_and_exports_exactly(ixt_corpus, tmp_path):
    out = tmp_path / "report.json"
    proc = run_python("tests/scripts/hf_families.py", ["--texts", ixt_corpus["jsonl"], "--work", tmp_path, "--out", out],
                      timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report) == list(FAMILIES)
    for family, r in report.items():
        print(f"{family}: |logit diff| import {r['import_diff']:.3g} (past 2000: {r['import_diff_past_2000']:.3g}), "
              f"export {r['export_diff']:.3g}; greedy {r['ours_greedy'][:8]}...")
        assert r["import_diff"] < LOGIT_ATOL and r["export_diff"] < LOGIT_ATOL, r
        assert r["ours_greedy"] and r["hf_greedy"][:len(r["ours_greedy"])] == r["ours_greedy"]
        config = r["exported_config"]
        assert config["model_type"] == FAMILIES[family] and r["export"]["model_type"] == FAMILIES[family]
        assert "model.safetensors.index.json" in r["exported_files"]  # sharded, as it was read
    llama, mistral, qwen2, qwen3 = (report[f] for f in FAMILIES)
    # Llama 3.2's scaling: mapped onto megatron-core's, written back; without it the late logits move.
    assert (llama["settings"]["use_rope_scaling"], llama["settings"]["rope_scaling_factor"]) == (True, 32.0)
    assert llama["exported_config"]["rope_parameters"]["rope_type"] == "llama3"
    assert llama["exported_config"]["rope_parameters"]["factor"] == 32.0
    assert llama["unscaled_diff_past_2000"] > 0.1 > LOGIT_ATOL > llama["import_diff_past_2000"]
    assert llama["summary"]["document_start"] == "bos" and llama["export"]["bos"] == 0
    assert llama["exported_config"]["bos_token_id"] == 0  # the real BOS, not the EOD
    assert mistral["settings"]["window_size"] == "4095,0" and mistral["exported_config"]["sliding_window"] == 4096
    assert qwen2["settings"]["add_qkv_bias"] and qwen2["exported_config"]["use_sliding_window"] is False
    assert qwen2["summary"]["document_start"] == "none"
    assert qwen2["bf16_round_trip_equal"]  # --bf16 import, --dtype bfloat16 export: the same bits
    assert qwen3["settings"]["qk_layernorm"] and qwen3["settings"]["kv_channels"] == 32
    assert qwen3["exported_config"]["head_dim"] == 32


def _config(model_type: str, **fields) -> dict:
    return {"model_type": model_type, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32768, **fields}


def test_what_megatron_core_cannot_compute_is_refused_by_name():
    from megatron_ixt.conversion import ConversionError
    from megatron_ixt.conversion.families import model_settings_from_hf

    def refused(config, *expected, seq_length=None):
        with pytest.raises(ConversionError) as error:
            model_settings_from_hf(config, "config.json", seq_length)
        for text in expected:
            assert text in str(error.value), str(error.value)

    llama3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    settings = model_settings_from_hf(_config("llama", rope_parameters=llama3), "config.json")
    assert (settings["use_rope_scaling"], settings["rope_scaling_factor"], settings["rotary_base"]) == (True, 8.0, 500000)
    # The older spelling (transformers < 5, most hub configs): rope_scaling + rope_theta.
    old = _config("llama", rope_theta=500000.0, rope_scaling={**llama3, "factor": 32.0})
    assert model_settings_from_hf(old, "config.json")["rope_scaling_factor"] == 32.0
    refused(_config("llama", rope_parameters={**llama3, "low_freq_factor": 2.0}),
            "rope low_freq_factor 2.0 (megatron-core's Llama 3 scaling fixes 1)")
    refused(_config("llama", rope_parameters={**llama3, "original_max_position_embeddings": 4096}),
            "original_max_position_embeddings 4096", "fixes 8192")
    refused(_config("qwen2", rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}), "rope_type 'yarn'")
    refused(_config("mixtral", num_local_experts=8), "model_type 'mixtral'", "llama, mistral, qwen2, qwen3")
    refused(_config("qwen2", num_experts=4), "num_experts 4 (mixture of experts)")
    refused(_config("llama", attention_bias=True), "attention_bias true")
    refused(_config("qwen3", hidden_act="gelu"), "hidden_act 'gelu'")

    # Sliding windows: Qwen2.5 carries one it does not use; Mistral-7B-v0.1 uses 4,096.
    unused = model_settings_from_hf(_config("qwen2", sliding_window=32768, use_sliding_window=False), "c", 32768)
    assert unused["window_size"] is None and unused["add_qkv_bias"]
    used = model_settings_from_hf(_config("mistral", sliding_window=4096), "config.json", 4096)
    assert used["window_size"] == "4095,0"
    refused(_config("mistral", sliding_window=4096), "sliding_window 4096 with --seq-length 8192",
            "--seq-length 4096 or less", seq_length=8192)
    assert model_settings_from_hf(_config("mistral", sliding_window=None), "c", 8192)["window_size"] is None


def test_a_window_is_refused_past_it_at_every_entry_point():
    from megatron_ixt.config.cli import ConfigError
    from megatron_ixt.config.schema import Config
    from megatron_ixt.config.validate import check_layout

    cfg = Config()
    cfg.model.window_size, cfg.model.seq_length = "4095,0", 4096
    check_layout(cfg)
    cfg.model.seq_length = 4097
    with pytest.raises(ConfigError, match=r"--seq-length 4097 is past the model's sliding window \(--window-size "
                                          r"4095,0: 4096 tokens\)"):
        check_layout(cfg)
    cfg.model.window_size = "4095,4"
    with pytest.raises(ConfigError, match="expected LEFT,0"):
        check_layout(cfg)


def test_safetensors_stream_writes_shards_the_library_reads(tmp_path):
    from safetensors.torch import load_file

    from megatron_ixt.conversion.safetensors_io import HFWeights, write_sharded

    tensors = {"a": torch.randn(300, 7), "b": torch.randn(5).to(torch.bfloat16), "c": torch.arange(12).reshape(3, 4),
               "d": torch.randn(64, 64).to(torch.float16)}
    items = [(k, list(v.shape), v.dtype, lambda v=v: v) for k, v in tensors.items()]
    files = write_sharded(str(tmp_path), items, max_shard_bytes=8_000)
    assert files[-1] == "model.safetensors.index.json" and len(files) == 4  # a (8.4 kB) and d alone; b and c together
    index = json.loads((tmp_path / files[-1]).read_text())
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in tensors.values())
    loaded = {}
    for name in files[:-1]:
        loaded.update(load_file(tmp_path / name))
    weights = HFWeights(str(tmp_path))
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor) and torch.equal(weights.get(name), tensor)
        assert weights.get(name).dtype == tensor.dtype
    single = tmp_path / "single"
    single.mkdir()
    assert write_sharded(str(single), items) == ["model.safetensors"]
    assert torch.equal(HFWeights(str(single)).get("d"), tensors["d"])


@pytest.mark.slow
def test_a_bos_model_keeps_its_bos_from_import_to_export(ixt_corpus, tmp_path):
    """A Llama-3-style model (its tokenizer's post-processor adds <|begin_of_text|>, its chat
    template writes {{ bos_token }}): imported at TP=2, data without the BOS refused, continued
    with --finetune on data preprocessed as the README says, exported; the exported tokenizer
    encodes texts and conversations exactly as the original."""
    from transformers import AutoTokenizer

    from tests.launch import read_metrics, run_torchrun
    from tests.scripts.hf_families import hf_model, tokenizer_files

    texts = [json.loads(line)["text"] for line in open(ixt_corpus["jsonl"])]
    source, ckpt, trained, out = (tmp_path / n for n in ("hf", "ckpt", "trained", "exported"))
    model, style = hf_model("llama3", vocab=600)
    tokenizer_files(str(source), texts[:300], style)
    model.save_pretrained(source)
    proc = run_python("tools/convert_checkpoint.py", ["--from", "hf", "--input", source, "--save", ckpt,
                                                      "--tensor-model-parallel-size", 2, "--seq-length", 128])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_python("tools/checkpoint_info.py", [ckpt])
    assert "document start: bos (documents start with the tokenizer's BOS; pretraining data is preprocessed " \
           "with --prepend-bos" in proc.stdout, proc.stdout + proc.stderr

    def preprocess(name, *flags):
        proc = run_python("tools/preprocess_data.py", [
            "--input", ixt_corpus["jsonl"], "--output-prefix", tmp_path / name, "--tokenizer-type",
            "HuggingFaceTokenizer", "--tokenizer-model", ckpt / "tokenizer" / "tokenizer.json",
            "--prefix-template", "critique", *flags])
        assert proc.returncode == 0, proc.stderr
        return tmp_path / f"{name}_text_document"

    train = ["--config", ckpt / "model.yaml", "--load", ckpt, "--finetune", "--micro-batch-size", 4,
             "--global-batch-size", 8, "--lr", 3e-3, "--lr-warmup-iters", 0, "--eval-interval", 0, "--split", "100,0,0",
             "--data-cache-path", tmp_path / "cache", "--log-interval", 1]
    # What the README recipe did before: documents without the BOS the model starts them with.
    without = preprocess("without_bos", "--append-eod")
    proc = run_torchrun(2, "pretrain_ixt.py", [*train, "--data-path", without, "--train-iters", 1], check=False)
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]  # 2 from each rank; torchrun says 1
    assert (f"--data-path {without}: the model's documents start with the tokenizer's BOS (--document-start bos"
            in proc.stderr), proc.stderr
    assert "preprocess it again with --prepend-bos" in proc.stderr

    data = preprocess("with_bos", "--prepend-bos", "--append-eod")
    # Generation and evaluation lay a text out as this data does: prefix, BOS, text.
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_ixt.format.prefixes import prefix_token_ids
    from megatron_ixt.tokenizers.base import document_context
    from megatron_ixt.tokenizers.build import build_tokenizer

    ours = build_tokenizer("HuggingFaceTokenizer", str(ckpt / "tokenizer" / "tokenizer.json"))
    docs = [json.loads(line) for line in open(ixt_corpus["jsonl"])]
    i = next(i for i, doc in enumerate(docs) if doc.get("feedback"))
    context = document_context(ours, "bos", prefix_token_ids(ours, "critique", docs[i]["feedback"]))
    assert context[-1] == 0 and context[0] == ours.feedback_open_id
    dataset = IndexedDataset(str(data))  # kept: its rows are views of its memory map
    assert dataset[i].tolist() == [*context, *ours.tokenize(docs[i]["text"]), ours.eod]
    log = tmp_path / "log.jsonl"
    run_torchrun(2, "pretrain_ixt.py", [*train, "--data-path", data, "--train-iters", 4, "--save", trained,
                                        "--log-file", log])
    losses = [row["lm loss"] for row in read_metrics(log)[0]]
    print(f"--finetune at TP=2, Llama 3 scaling: losses {[round(x, 4) for x in losses]}")
    assert len(losses) == 4 and losses[-1] < losses[0]

    proc = run_python("tools/convert_checkpoint.py", ["--to", "hf", "--load", trained, "--output", out])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["bos_token_id"], config["eos_token_id"]) == ("llama", 0, 2)
    before = AutoTokenizer.from_pretrained(source)
    after = AutoTokenizer.from_pretrained(out)
    assert after.bos_token == "<|begin_of_text|>" and after.bos_token_id == 0
    for text in texts[:40]:
        assert after(text)["input_ids"] == before(text)["input_ids"]
    assert after("def f(x):")["input_ids"][0] == 0
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
                    {"role": "assistant", "content": "5"}]
    ids = before.apply_chat_template(conversation, tokenize=True, return_dict=False)
    assert after.apply_chat_template(conversation, tokenize=True, return_dict=False) == ids and ids[0] == 0
    assert ids.count(0) == 1  # one BOS: the template's, none added twice
    # SFT renders conversations the same way: the template's BOS, once (no --prepend-bos).
    from megatron_ixt.tokenizers.chat import chat_template_for, render_ids

    ours_ids, _ = render_ids(ours, chat_template_for(ours), conversation)
    assert ours_ids.tolist() == ids


def test_pretraining_data_must_start_documents_as_the_model_does(tmp_path, caplog):
    """The rule per document start, on every dataset of a blend, by its .meta.json; datasets
    without one (Megatron-LM's tool) and mock data get a warning; SFT data is not checked."""
    from megatron_ixt.config.cli import ConfigError
    from megatron_ixt.config.schema import Config
    from megatron_ixt.data.datasets import check_document_start

    def dataset(name, **settings):
        prefix = tmp_path / name
        (tmp_path / f"{name}.meta.json").write_text(json.dumps(settings))
        return str(prefix)

    bos = dataset("bos", prepend_bos=True, append_eod=True)
    plain = dataset("plain", append_eod=True)
    bare = dataset("bare")
    sft = dataset("sft", sft=True)
    cfg = Config()

    def check(start, *paths):
        cfg.model.document_start, cfg.data.data_path = start, [str(p) for p in paths]
        check_document_start(cfg, "recorded in the --load checkpoint")

    check("bos", bos, sft)
    check("none", plain)
    check("eod", plain)
    with pytest.raises(ConfigError, match=rf"--data-path {plain}: the model's documents start with the tokenizer's "
                                          r"BOS \(--document-start bos, recorded in the --load checkpoint\), but .* "
                                          r"preprocessed with --append-eod: preprocess it again with --prepend-bos"):
        check("bos", "0.5", bos, "0.5", plain)  # a blend: each dataset
    with pytest.raises(ConfigError, match=r"start with nothing \(no BOS\) .*with --prepend-bos --append-eod: "
                                          r"preprocess it again with no --prepend-bos"):
        check("none", bos)
    with pytest.raises(ConfigError, match="preprocessed with neither --prepend-bos nor --append-eod: preprocess it "
                                          "again with --append-eod"):
        check("eod", bare)
    caplog.clear()
    check("eod", bos)  # the demo's BOS control: [EOD] [BOS] text
    check("bos", tmp_path / "megatron_lm")  # no .meta.json
    assert "put the EOD alone first" in caplog.text and "cannot check that its documents start" in caplog.text
    cfg.data.data_path, cfg.data.mock_data = [], True
    check("bos")
    assert "mock documents have no BOS" in caplog.text


def test_the_exported_tokenizer_adds_a_bos_only_for_a_bos_model(ixt_corpus, tmp_path):
    """A Llama-3 tokenizer whose post-processor adds <|begin_of_text|>: exported for a model
    whose documents start with it, it still adds it; for one trained here on EOD-separated
    documents (--document-start eod), it adds nothing and names the EOD."""
    from tokenizers import Tokenizer

    from megatron_ixt.conversion.hf_tokenizer import export_tokenizer
    from megatron_ixt.tokenizers.build import build_tokenizer
    from tests.scripts.hf_families import tokenizer_files

    texts = [json.loads(line)["text"] for line in open(ixt_corpus["jsonl"])][:100]
    tokenizer_files(str(tmp_path / "src"), texts, "llama3")
    ours = build_tokenizer("HuggingFaceTokenizer", str(tmp_path / "src" / "tokenizer.json"))
    plain = ours.tokenize("def f(x):")
    for name, bos, add_bos, first in (("bos", 0, True, [0]), ("eod", None, False, [])):
        export_tokenizer(ours, str(tmp_path / name), 128, bos=bos, add_bos=add_bos)
        exported = Tokenizer.from_file(str(tmp_path / name / "tokenizer.json"))
        assert exported.encode("def f(x):").ids == [*first, *plain], name
        config = json.loads((tmp_path / name / "tokenizer_config.json").read_text())
        assert (config["bos_token"], config["add_bos_token"]) == (("<|begin_of_text|>", True) if bos == 0 else
                                                                  ("<|eot_id|>", False))
