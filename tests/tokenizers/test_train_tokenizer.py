"""tools/train_tokenizer.py: lossless for code, delimiters built in, readable failures."""

from __future__ import annotations

import pytest

from megatron_ixt.format.special_tokens import FEEDBACK_CLOSE, FEEDBACK_OPEN
from megatron_ixt.tokenizers.training import split_for_training
from megatron_ixt.tokenizers.build import build_tokenizer

from tests.text_fixtures import TRAIN_TOOL, run_subprocess, write_jsonl


def test_train_tool_builds_a_lossless_model(tmp_path, stdlib_texts, humaneval_texts):
    source = write_jsonl(tmp_path / "train.jsonl", [{"code": t} for t in stdlib_texts[:500]])
    run = run_subprocess(TRAIN_TOOL, "--input", source, "--model-prefix", tmp_path / "tok" / "code1k",
                         "--vocab-size", 1000, "--model-type", "unigram", "--json-keys", "code", "--num-threads", 2)
    assert run.returncode == 0, run.stderr
    model = tmp_path / "tok" / "code1k.model"
    assert model.exists() and "Wrote" in run.stderr

    tokenizer = build_tokenizer("SentencePieceTokenizer", str(model))
    # HumanEval was not in the training text: indentation, blank lines and tabs survive anyway.
    for text in humaneval_texts + ["\tx  =  1\n\n\n        return  {'a':\t[1,2]}\r\n", "caf\u00e9 \u4e2d\u6587 \U0001f600"]:
        assert tokenizer.detokenize(tokenizer.tokenize(text)) == text
    for symbol in ("\n", "\t"):
        assert len(tokenizer.tokenize(symbol)) == 1, symbol
    # The delimiters are pieces of the model; text that quotes them stays ordinary text.
    assert tokenizer.delimiter_source == "builtin"
    assert tokenizer.vocab[FEEDBACK_OPEN] == tokenizer.feedback_open_id
    assert tokenizer.vocab[FEEDBACK_CLOSE] == tokenizer.feedback_close_id
    assert (tokenizer.eod, tokenizer.vocab_size) == (2, 1000)


def test_train_tool_reports_errors(tmp_path, stdlib_texts):
    source = write_jsonl(tmp_path / "small.jsonl", [{"text": t} for t in stdlib_texts[:5]])
    run = run_subprocess(TRAIN_TOOL, "--input", source, "--model-prefix", tmp_path / "t", "--vocab-size", 50000)
    assert run.returncode == 1 and "Vocabulary size too high" in run.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": \n')
    run = run_subprocess(TRAIN_TOOL, "--input", bad, "--model-prefix", tmp_path / "t", "--vocab-size", 100)
    assert run.returncode == 1 and f"{bad}:2: expected a JSON object (malformed JSON" in run.stderr
    bad.write_text('{"text": "a"}\n{"code": "b"}\n')  # the same errors as preprocessing
    run = run_subprocess(TRAIN_TOOL, "--input", bad, "--model-prefix", tmp_path / "t", "--vocab-size", 100)
    assert run.returncode == 1 and f"{bad}:2: field 'text': expected a string (the key 'text' is missing)" in run.stderr


@pytest.mark.parametrize("limit", [64, 200])
def test_long_documents_are_cut_at_line_boundaries(limit):
    text = "".join(f"    line {i} = {'x' * (i % 30)}\n" for i in range(100)) + "y" * 500
    pieces = list(split_for_training(text, limit))
    assert "".join(pieces) == text
    assert all(len(p.encode()) <= limit for p in pieces)
    assert all(p.endswith("\n") for p in pieces if not p.startswith("y"))
