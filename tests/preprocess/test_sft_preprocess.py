"""tools/preprocess_data.py --sft: conversations -> an indexed dataset plus its roles file.

* Real conversations (GSM8K, annotated by the math verifier: ``sft_corpus``): byte-identical
  outputs for 1 and 2 workers, and every sequence equal to the chat encoder's output for its line.
* Conversations longer than --seq-length + 1: whole trailing turns left out, or the conversation
  left out, counted; or refused with file and line.
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
from megatron_ixt.tokenizers.chat import FEEDBACK, LOSS, chat_template_for, encode_conversation, variant

from tests.preprocess.test_bad_input import assert_nothing_written, write_lines

SUFFIXES = (".bin", ".idx", ".ixt.npy", ROLES_FILE_SUFFIX)


def _sft_args(source, out, tokenizer, *extra):
    return ["--sft", "--input", source, "--output-prefix", out, "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", tokenizer, *extra]


def _digests(prefix: str) -> dict:
    return {s: hashlib.sha256(open(prefix + s, "rb").read()).hexdigest() for s in SUFFIXES}


def _fitting(tokenizer, template, turns, feedback, limit):
    """What --overlong truncate stores for one conversation, by its rule: the encoder's output
    for the whole conversation, else for its longest leading part that ends with an assistant
    turn, where each variant (with and without feedback) has at most ``limit`` tokens; None."""
    ends = [i + 1 for i, turn in enumerate(turns) if turn["role"] == "assistant"]
    for end in reversed(ends):
        ids, roles = encode_conversation(tokenizer, template, turns[:end], feedback, eod=tokenizer.eod)
        if all(len(variant(ids, roles, c)[0]) <= limit for c in (True, False)):
            return ids, roles, end < len(turns)
    return None


def test_byte_identical_across_workers_and_equal_to_the_encoder(tmp_path, sft_corpus, run_preprocess_tool):
    for workers in (1, 2):
        run = run_preprocess_tool(*_sft_args(sft_corpus["jsonl"], tmp_path / f"w{workers}", sft_corpus["tokenizer"],
                                             "--seq-length", 512, "--workers", workers, "--batch-size", 16))
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
    assert len(lines) == meta["counts"]["documents"]
    annotated, start, k, truncated, dropped = 0, 0, 0, 0, 0
    for line in lines:
        conversation = validate_conversation(line)
        feedback = None
        if conversation.feedback is not None:
            annotated += 1
            text = prefix_template.render(conversation.feedback, conversation.feedback.level)
            feedback = prefix_ids_of_texts(tokenizer, prefix_template, [text])[0]
        fitting = _fitting(tokenizer, template, conversation.conversations[0], feedback, 513)
        if fitting is None:
            dropped += 1
            continue
        ids, r, cut = fitting
        truncated += cut
        assert dataset[k].tolist() == ids.tolist()
        assert roles[start:start + len(ids)].tolist() == r.tolist()
        assert side[k, 0] == np.count_nonzero(r & FEEDBACK)
        assert side[k, 1] == (conversation.feedback.level if conversation.feedback else 0)
        start, k = start + len(ids), k + 1
    assert k == len(dataset) and 0 < annotated < len(lines)  # --fraction 0.8: the rest trains without feedback
    assert meta["counts"]["loss_tokens"] == int(np.count_nonzero((np.asarray(roles) & LOSS) & ~(np.asarray(roles) & 4)))
    assert (meta["counts"]["truncated_conversations"], meta["counts"]["dropped_overlong_conversations"]) == (
        truncated, dropped)


def test_overlong_conversations_keep_whole_turns_or_are_left_out(tmp_path, sft_corpus, run_preprocess_tool):
    """Three conversations and --seq-length 128: a short one stays whole; one whose second
    answer is too long keeps its first exchange, ending as the template ends a turn; one
    whose only answer is too long is left out (never a sample with nothing to learn). The
    expected ids are SentencePiece's own encoding of the default template's text."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=sft_corpus["tokenizer"])
    eod = build_tokenizer("SentencePieceTokenizer", sft_corpus["tokenizer"]).eod
    long_answer = " ".join(["the answer is five"] * 80)
    short = [("What is 2 + 3?", "5"), ("And 3 + 4?", "7")]
    corpus = [short, [("What is 2 + 3?", "5"), ("Why?", long_answer)], [("Explain addition.", long_answer)]]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"messages": [m for q, a in turns for m in (
        {"role": "user", "content": q}, {"role": "assistant", "content": a})]}) + "\n" for turns in corpus))

    def rendered(turns):  # the default template, by hand, and the EOD SFT appends
        return sp.encode("".join(f"<|user|>\n{q}\n<|assistant|>\n{a}\n" for q, a in turns)) + [eod]

    assert len(rendered(short)) <= 129 < len(rendered(corpus[1]))
    run = run_preprocess_tool(*_sft_args(path, tmp_path / "cut", sft_corpus["tokenizer"], "--seq-length", 128))
    assert run.returncode == 0, run.output
    stored = IndexedDataset(str(tmp_path / "cut_messages_document"))
    assert [stored[i].tolist() for i in range(len(stored))] == [rendered(short), rendered(corpus[1][:1])]
    meta = read_metadata(str(tmp_path / "cut_messages_document"))
    assert (meta["counts"]["truncated_conversations"], meta["counts"]["dropped_overlong_conversations"]) == (1, 1)
    assert "1 conversations truncated to their turns that fit" in run.output and "1 left out" in run.output

    run = run_preprocess_tool(*_sft_args(path, tmp_path / "drop", sft_corpus["tokenizer"], "--seq-length", 128,
                                         "--overlong", "drop"))
    assert run.returncode == 0, run.output
    stored = IndexedDataset(str(tmp_path / "drop_messages_document"))
    assert [stored[i].tolist() for i in range(len(stored))] == [rendered(short)]
    assert read_metadata(str(tmp_path / "drop_messages_document"))["counts"]["dropped_overlong_conversations"] == 2

    run = run_preprocess_tool(*_sft_args(path, tmp_path / "out" / "refused", sft_corpus["tokenizer"],
                                         "--seq-length", 128, "--overlong", "refuse"))
    assert run.returncode == 1, run.output
    assert f"{path}:2: field 'messages': expected a conversation of at most 129 tokens" in run.output
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
