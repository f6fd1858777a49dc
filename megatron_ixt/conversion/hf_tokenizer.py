"""Tokenizer files of an exported model: `tokenizer.json` + `tokenizer_config.json`.

The exported `tokenizer.json` encodes text with the same ids as this project's tokenizer
(checked on sample texts at export time) and holds the two feedback delimiters as special
tokens at the ids training used, appended ones included:

* HuggingFaceTokenizer: its own `tokenizer.json`.
* SentencePieceTokenizer: converted with transformers' `SpmConverter`, which follows the
  model's normalizer spec, merges (BPE) or scores (unigram) and user-defined pieces; built-in
  delimiter pieces are first made unreachable from text, as in training.
* GPT2BPETokenizer: OpenAI's byte-level BPE, as `tokenizers` builds it from the two files.
* TikTokenizer: refused (see `_library_tokenizer`).

Unlike training (where a delimiter string inside a document is ordinary text), the exported
tokenizer matches the delimiter strings in text, as Hugging Face tokenizers do with special
tokens: that is how a prompt such as "<|feedback|>Quality: 5/5<|/feedback|>def f(" selects
the feedback in vLLM or lm-evaluation-harness. Tokenize untrusted text with
`split_special_tokens=True`: it then gives exactly the training ids, delimiter strings as
ordinary text (tests/data/test_own_tokenizer.py checks both, in every tokenizer family).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

from megatron_ixt.conversion import ConversionError
from megatron_ixt.format.special_tokens import FEEDBACK_CLOSE, FEEDBACK_OPEN
from megatron_ixt.tokenizers.bpe import GPT2BPETokenizer, HuggingFaceTokenizer
from megatron_ixt.tokenizers.sentencepiece_model import SentencePieceTokenizer
from megatron_ixt.tokenizers.chat import chat_template_for

logger = logging.getLogger(__name__)

SAMPLE_TEXTS = (
    "def fibonacci(n):\n    if n < 2:\n        return n\n\treturn fibonacci(n - 1) + fibonacci(n - 2)\n",
    "The quick brown fox jumps over the lazy dog. 12345 caf\u00e9 \u4e2d\u6587 \U0001f600",
    "  leading spaces, trailing spaces  \n\n\nblank lines",
    "Quality: 5/5\nScore: 9.5/10; Writing style 9, Expertise 8\nCritique: Clear and correct.",
)


def _library_tokenizer(tokenizer):
    """A `tokenizers.Tokenizer` encoding text like `tokenizer` (delimiters not yet special)."""
    from tokenizers import Tokenizer, decoders

    if isinstance(tokenizer, HuggingFaceTokenizer):
        return Tokenizer.from_file(tokenizer._files["tokenizer_model"])
    if isinstance(tokenizer, GPT2BPETokenizer):
        return Tokenizer.from_str(tokenizer._tok.to_str())
    if isinstance(tokenizer, SentencePieceTokenizer):
        from sentencepiece import sentencepiece_model_pb2
        from transformers.convert_slow_tokenizer import SpmConverter

        proto = sentencepiece_model_pb2.ModelProto()
        with open(tokenizer._files["tokenizer_model"], "rb") as f:
            proto.ParseFromString(f.read())
        # Built-in delimiters: as in training, text must never reach them (they become
        # special added tokens below): control pieces, not matched by the pre-tokenizer nor
        # made by merges, and (unigram) a score no segmentation would choose.
        delimiters = {i for i, p in enumerate(proto.pieces) if p.piece in (FEEDBACK_OPEN, FEEDBACK_CLOSE)}
        lowest = min((p.score for p in proto.pieces), default=0.0) - 1000.0
        for i in delimiters:
            proto.pieces[i].type = sentencepiece_model_pb2.ModelProto.SentencePiece.CONTROL
        pieces = [(p.piece, lowest if i in delimiters else p.score) for i, p in enumerate(proto.pieces)]
        bpe = proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE
        # A dict vocabulary selects the BPE model (merges ranked by piece score), a list of
        # (piece, score) the unigram model: the same algorithm as the SentencePiece model.
        converted = SpmConverter.build_tokenizer_from_spm_proto(proto, {p: i for i, (p, _) in enumerate(pieces)}
                                                                if bpe else pieces)
        if bpe:
            # The converter emits whole words found in the vocabulary (ignore_merges) so that
            # multi-character user-defined pieces survive; SentencePiece merges by score and
            # never emits a control piece. Only needed if such user-defined pieces remain.
            spec = json.loads(converted.to_str())
            spec["model"]["ignore_merges"] = any(p.type == 4 and len(p.piece) > 1 for p in proto.pieces)
            converted = Tokenizer.from_str(json.dumps(spec))
        if proto.normalizer_spec.add_dummy_prefix:
            # SentencePiece drops the space its dummy prefix added when it decodes.
            converted.decoder = decoders.Sequence([converted.decoder, decoders.Strip(" ", 1, 0)])
        return converted
    if tokenizer.tokenizer_type == "TikTokenizer":
        # Its ranks would make a byte-level BPE, but its special tokens (ids 0..N-1 under the
        # ranks) may spell tokens of the vocabulary itself ("<s>"), which a tokenizer.json
        # cannot hold at two ids: not converted.
        raise ConversionError("Hugging Face export of a TikTokenizer model is not supported (its tiktoken "
                              "vocabulary is not converted to a tokenizer.json); pass --tokenizer-type "
                              "HuggingFaceTokenizer --tokenizer-model with a tokenizer.json of the same ids")
    raise ConversionError(f"a {tokenizer.tokenizer_type} has no text vocabulary to export")


def _token_text(tokenizer, token_id: int) -> str:
    return {i: t for t, i in tokenizer.vocab.items()}[token_id] if token_id not in (
        tokenizer.feedback_open_id, tokenizer.feedback_close_id) else tokenizer.detokenize([token_id])


def bos_of(tokenizer) -> Optional[int]:
    """The tokenizer's BOS id (added before a text or not), None when it has none."""
    if isinstance(tokenizer, HuggingFaceTokenizer):
        if tokenizer.added_bos is not None:
            return tokenizer.added_bos
        config = os.path.join(os.path.dirname(tokenizer._files["tokenizer_model"]), "tokenizer_config.json")
        settings = json.load(open(config)) if os.path.isfile(config) else {}
        bos = settings.get("bos_token")
        bos = bos.get("content") if isinstance(bos, dict) else bos
        return tokenizer.vocab.get(bos) if isinstance(bos, str) else None
    try:
        bos = tokenizer.bos
    except (NotImplementedError, AttributeError):
        return None
    return bos if isinstance(bos, int) and bos >= 0 else None


def _adding_bos(library, bos: int, bos_text: str):
    """``library`` with a post-processor that puts the BOS before a text (and before each of
    a pair), as Llama tokenizers do; unchanged if its own already does."""
    from tokenizers import processors

    if library.encode("a", add_special_tokens=True).ids[:1] == [bos]:
        return library
    template = processors.TemplateProcessing(single=f"{bos_text} $A", pair=f"{bos_text} $A {bos_text} $B:1",
                                             special_tokens=[(bos_text, bos)])
    existing = library.post_processor
    library.post_processor = template if existing is None else processors.Sequence([existing, template])
    return library


def _adding_nothing(library):
    """``library`` without the templates of its post-processor that put tokens around a text
    (a Llama tokenizer's BOS): a model trained here on EOD-separated documents never saw them."""
    from tokenizers import Tokenizer

    if library.encode("a", add_special_tokens=True).ids == library.encode("a", add_special_tokens=False).ids:
        return library
    spec = json.loads(library.to_str())
    post = spec.get("post_processor") or {}
    if post.get("type") == "TemplateProcessing":
        spec["post_processor"] = None
    elif post.get("type") == "Sequence":
        kept = [p for p in post["processors"] if p.get("type") != "TemplateProcessing"]
        spec["post_processor"] = {**post, "processors": kept} if kept else None
    return Tokenizer.from_str(json.dumps(spec))


def export_tokenizer(tokenizer, out_dir: str, model_max_length: int, bos: Optional[int] = None,
                     add_bos: bool = False) -> dict:
    """Write `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`;
    return a summary (ids, agreement on the sample texts). ``bos``: the id to name as the BOS
    (None: the EOD); ``add_bos``: the model's documents start with it (``--document-start
    bos``), so the tokenizer adds it before a text, and otherwise adds nothing."""
    from tokenizers import AddedToken

    library = _library_tokenizer(tokenizer)
    open_id, close_id = tokenizer.feedback_open_id, tokenizer.feedback_close_id
    eod_text = _token_text(tokenizer, tokenizer.eod)
    if add_bos and bos is None:
        raise ConversionError(f"the model's documents start with a BOS (--document-start bos), but the "
                              f"{tokenizer.tokenizer_type} has none")
    bos_text = eod_text if bos is None else _token_text(tokenizer, bos)
    # Existing pieces (built-in delimiters, the eod) keep their ids; missing delimiters are
    # appended, which puts them at the next free ids: the ones training used.
    library.add_special_tokens([AddedToken(eod_text, special=True, normalized=False)])
    library.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (FEEDBACK_OPEN, FEEDBACK_CLOSE)])
    if bos is not None:
        library.add_special_tokens([AddedToken(bos_text, special=True, normalized=False)])
    library = _adding_bos(library, bos, bos_text) if add_bos else _adding_nothing(library)
    got = (library.token_to_id(FEEDBACK_OPEN), library.token_to_id(FEEDBACK_CLOSE), library.token_to_id(eod_text))
    if got != (open_id, close_id, tokenizer.eod):
        raise ConversionError(f"the exported tokenizer gives <|feedback|>, <|/feedback|>, eod the ids {got}, "
                              f"training used {(open_id, close_id, tokenizer.eod)}")
    agree = sum(library.encode(t, add_special_tokens=False).ids == list(tokenizer.tokenize(t)) for t in SAMPLE_TEXTS)
    if agree < len(SAMPLE_TEXTS):
        logger.warning("the exported tokenizer.json encodes %d of %d sample texts differently from %s",
                       len(SAMPLE_TEXTS) - agree, len(SAMPLE_TEXTS), tokenizer.tokenizer_type)
    os.makedirs(out_dir, exist_ok=True)
    library.save(os.path.join(out_dir, "tokenizer.json"))
    specials = {"eos_token": eod_text, "bos_token": bos_text, "pad_token": eod_text,
                "additional_special_tokens": [FEEDBACK_OPEN, FEEDBACK_CLOSE]}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "extra_special_tokens": [FEEDBACK_OPEN, FEEDBACK_CLOSE],
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        # The tokenizer.json's post-processor adds the BOS where the model's documents start
        # with it; this flag says the same to the transformers releases that read it.
        "add_bos_token": add_bos,
        "add_eos_token": False,
        # The template SFT rendered conversations with (tokenizers/chat.py): the tokenizer's own,
        # else the default, so that apply_chat_template gives the ids the model was trained on.
        "chat_template": chat_template_for(tokenizer).source,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump(specials, f, indent=2)
    return {"feedback_open_id": open_id, "feedback_close_id": close_id, "eod": tokenizer.eod, "bos": bos,
            "sample_texts_identical": f"{agree}/{len(SAMPLE_TEXTS)}"}
