"""tools/preprocess_data.py --sft: conversations -> an indexed dataset plus its roles file.

* Real conversations (GSM8K, annotated by the math verifier: ``sft_corpus``): byte-identical
  outputs for 1 and 2 workers, and every sequence equal to the chat encoder's output for its line.
* Conversations longer than --seq-length + 1: truncated and counted, or refused with file and line.
* Bad input names file, line and field, exits 1 and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_ixt.format.conversation import validate_conversation
from megatron_ixt.format.indexed_io import ROLES_FILE_SUFFIX, read_metadata, read_roles, read_side_file
from megatron_ixt.format.prefixes import load_template, prefix_ids_of_texts
from megatron_ixt.tokenizers.build import build_tokenizer
from megatron_ixt.tokenizers.chat import FEEDBACK, LOSS, chat_template_for, encode_conversation

from tests.preprocess.test_bad_input import assert_nothing_written, write_lines

SUFFIXES = (".bin", ".idx", ".ixt.npy", ROLES_FILE_SUFFIX)


def _sft_args(source, out, tokenizer, *extra):
    return ["--sft", "--input", source, "--output-prefix", out, "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", tokenizer, *extra]


def _digests(prefix: str) -> dict:
    return {s: hashlib.sha256(open(prefix + s, "rb").read()).hexdigest() for s in SUFFIXES}


def test_byte_identical_across_workers_and_equal_to_the_encoder(tmp_path, sft_corpus, run_preprocess_tool):
    for workers in (1, 2):
        run = run_preprocess_tool(*_sft_args(sft_corpus["jsonl"], tmp_path / f"w{workers}", sft_corpus["tokenizer"],
                                             "--seq-length", 256, "--workers", workers, "--batch-size", 16))
        assert run.returncode == 0, run.output
    one, two = (str(tmp_path / f"w{w}_messages_document") for w in (1, 2))
    assert _digests(one) == _digests(two)
    assert _digests(one) == _digests(sft_corpus["prefix"])  # the fixture's run: same flags, other batches

    meta = read_metadata(one)
    assert meta["sft"]["chat_template"]["origin"] == "default"
    tokenizer = build_tokenizer("SentencePieceTokenizer", sft_corpus["tokenizer"])
    template, prefix_template = chat_template_for(tokenizer), load_template("critique")
    dataset, roles, side = IndexedDataset(one), read_roles(one), read_side_file(one)
    lines = [json.loads(line) for line in open(sft_corpus["jsonl"])]
    assert len(dataset) == len(lines) == meta["counts"]["documents"]
    annotated, start = 0, 0
    for i, line in enumerate(lines):
        conversation = validate_conversation(line)
        feedback = None
        if conversation.feedback is not None:
            annotated += 1
            text = prefix_template.render(conversation.feedback, conversation.feedback.level)
            feedback = prefix_ids_of_texts(tokenizer, prefix_template, [text])[0]
        ids, r = encode_conversation(tokenizer, template, conversation.conversations[0], feedback, eod=tokenizer.eod)
        ids, r = ids[:257 + min(np.count_nonzero(r & FEEDBACK), np.count_nonzero(r & 4))], r[:len(ids)]
        stored = dataset[i]
        assert stored.tolist() == ids[:len(stored)].tolist() and len(stored) == min(len(ids), len(stored))
        assert roles[start:start + len(stored)].tolist() == r[:len(stored)].tolist()
        assert side[i, 0] == np.count_nonzero(r[:len(stored)] & FEEDBACK)
        assert side[i, 1] == (conversation.feedback.level if conversation.feedback else 0)
        start += len(stored)
    assert 0 < annotated < len(lines)  # --fraction 0.8: a targeted share, the rest trains without feedback
    assert meta["counts"]["loss_tokens"] == int(np.count_nonzero((np.asarray(roles) & LOSS) & ~(np.asarray(roles) & 4)))
    assert meta["counts"]["truncated_conversations"] > 0  # some worked answers do not fit in 257 tokens


def test_overlong_truncated_or_refused(tmp_path, sft_corpus, run_preprocess_tool):
    args = _sft_args(sft_corpus["jsonl"], tmp_path / "cut", sft_corpus["tokenizer"], "--seq-length", 64)
    run = run_preprocess_tool(*args)
    assert run.returncode == 0, run.output
    meta = read_metadata(str(tmp_path / "cut_messages_document"))
    assert meta["counts"]["truncated_conversations"] > 0
    assert f"{meta['counts']['truncated_conversations']} conversations truncated" in run.output
    assert int(IndexedDataset(str(tmp_path / "cut_messages_document")).sequence_lengths.max()) <= 65 + 64

    run = run_preprocess_tool(*_sft_args(sft_corpus["jsonl"], tmp_path / "out" / "refused", sft_corpus["tokenizer"],
                                         "--seq-length", 64, "--overlong", "refuse"))
    assert run.returncode == 1, run.output
    assert f"{sft_corpus['jsonl']}:1: field 'messages': expected a conversation of at most 65 tokens" in run.output
    assert_nothing_written(tmp_path)


GOOD = json.dumps({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]})
BAD = {
    "no messages": ('{"text": "2+2=4"}', "messages", "the key is missing"),
    "role out of order": ('{"messages": [{"role": "assistant", "content": "4"}]}', "messages[0].role",
                          "'user' after the start of the conversation"),
    "two user turns": ('{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}',
                       "messages[1].role", "'assistant' after user"),
    "empty assistant turn": ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]}',
                             "messages[1].content", "a non-empty assistant turn"),
    "content not a string": ('{"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}]}',
                             "messages[0].content", "a string"),
    "unknown role": ('{"messages": [{"role": "tool", "content": "a"}]}', "messages[0].role", "one of system, user, assistant"),
    "ends with the user": ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, '
                           '{"role": "user", "content": "c"}]}', "messages[2].role", "end with an assistant turn"),
    "bad feedback": ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], '
                     '"feedback": {"score": 11}}', "feedback.score", "within the scale [0, 10]"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_conversation(tmp_path, sp_model, run_preprocess_tool, case):
    bad, field, words = BAD[case]
    source = write_lines(tmp_path / "conversations.jsonl", [GOOD.encode(), GOOD.encode(), bad.encode(), GOOD.encode()])
    run = run_preprocess_tool(*_sft_args(source, tmp_path / "out" / "sft", sp_model, "--workers", 2, "--batch-size", 1))
    assert run.returncode == 1, run.output
    assert f"{source}:3: field '{field}': expected" in run.output and words in run.output, run.output
    assert "Traceback" not in run.output
    assert_nothing_written(tmp_path)
