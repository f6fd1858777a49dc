"""Training a SentencePiece tokenizer on JSONL text, lossless for code.

SentencePiece's defaults normalize text (NFKC) and collapse runs of spaces, which destroys
Python indentation: `decode(encode(text)) != text`. The settings here keep every byte:

* `normalization_rule_name="identity"`, `remove_extra_whitespaces=False`: no rewriting;
* `allow_whitespace_only_pieces=True`: runs of indentation become pieces of their own;
* `byte_fallback=True`: characters outside the vocabulary become byte tokens, not `<unk>`;
* `add_dummy_prefix=False`: no space is invented at the start of a text, so the tokens of
  a text do not depend on what precedes it (the prefix is tokenized separately);
* `split_digits=True`: numbers are read digit by digit;
* user-defined symbols `\\n`, `\\t` and the two feedback delimiters, each a single piece.

Only one character is not round-tripped: U+2581 ("▁"), which SentencePiece uses to mark
spaces, comes back as a space.

SentencePiece skips "sentences" longer than `max_sentence_length` bytes, so documents are
cut into pieces of whole lines below that length before training.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from megatron_ixt.config.flags import add_dataclass_arguments
from megatron_ixt.config.schema import arg, required
from megatron_ixt.format.document import DocumentSpec, parse_document_line
from megatron_ixt.format.errors import DataError
from megatron_ixt.format.sources import LineBatchReader, expand_inputs
from megatron_ixt.format.special_tokens import FEEDBACK_CLOSE, FEEDBACK_OPEN

logger = logging.getLogger(__name__)

MAX_SENTENCE_BYTES = 16384

LOSSLESS_OPTIONS = dict(
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    byte_fallback=True,
    split_digits=True,
    add_dummy_prefix=False,
    max_sentence_length=MAX_SENTENCE_BYTES,
)
"""SentencePiece trainer options that keep code intact (module docstring)."""

USER_DEFINED_SYMBOLS = ("\n", "\t", FEEDBACK_OPEN, FEEDBACK_CLOSE)


def iter_training_texts(
    paths: Sequence[str], json_keys: Sequence[str] = ("text",), max_documents: Optional[int] = None
) -> Iterator[str]:
    """Texts of `json_keys` from JSONL files, cut at line boundaries below the sentence limit.

    Lines are read by the document format's own parser (`document.parse_document_line`), so a
    bad line fails with the same `file:line: field ...` error as in preprocessing.
    """
    spec = DocumentSpec(json_keys=(json_keys,) if isinstance(json_keys, str) else tuple(json_keys))
    documents = 0
    for batch in LineBatchReader(paths):
        for offset, raw in enumerate(batch.lines):
            document = parse_document_line(raw, spec, batch.path, batch.first_line + offset)
            for value in document.texts.values():
                for text in [value] if isinstance(value, str) else value:
                    yield from split_for_training(text)
            documents += 1
            if max_documents is not None and documents >= max_documents:
                return


def split_for_training(text: str, limit: int = MAX_SENTENCE_BYTES) -> Iterator[str]:
    """Cut `text` into chunks of whole lines of at most `limit` UTF-8 bytes."""
    if len(text.encode("utf-8")) <= limit:
        if text:
            yield text
        return
    chunk, size = [], 0
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        if size + n > limit and chunk:
            yield "".join(chunk)
            chunk, size = [], 0
        if n > limit:  # one enormous line: cut it by characters
            for start in range(0, len(line), limit // 4):
                yield line[start:start + limit // 4]
            continue
        chunk.append(line)
        size += n
    if chunk:
        yield "".join(chunk)


def train_sentencepiece(
    inputs: Sequence[str] | str,
    model_prefix: str,
    vocab_size: int,
    model_type: str = "unigram",
    json_keys: Sequence[str] = ("text",),
    max_documents: Optional[int] = None,
    num_threads: Optional[int] = None,
    extra_symbols: Sequence[str] = (),
    character_coverage: float = 0.9995,
    seed_sentencepiece_size: int = 1_000_000,
) -> str:
    """Train a lossless SentencePiece model; return the path of `<model_prefix>.model`.

    The model has `<unk>`=0, `<s>`=1, `</s>`=2 (the eod used by preprocessing) and the
    feedback delimiters as user-defined symbols.
    """
    import sentencepiece

    paths = expand_inputs(inputs)
    folder = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(folder, exist_ok=True)
    symbols = list(USER_DEFINED_SYMBOLS) + [s for s in extra_symbols if s not in USER_DEFINED_SYMBOLS]
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter_training_texts(paths, json_keys, max_documents),
            model_prefix=model_prefix,
            vocab_size=vocab_size,
            model_type=model_type,
            user_defined_symbols=symbols,
            character_coverage=character_coverage,
            seed_sentencepiece_size=seed_sentencepiece_size,
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
            **LOSSLESS_OPTIONS,
        )
    except RuntimeError as error:
        # e.g. "Vocabulary size is too high (4000). Please set it to a value <= 1234."
        raise DataError(f"SentencePiece training failed: {error}") from None
    return model_prefix + ".model"


@dataclass
class TokenizerTrainingConfig:
    """The flags of tools/train_tokenizer.py."""

    input: str = required("JSONL file, glob or comma-separated list (.gz/.zst ok)")
    model_prefix: str = required("writes <prefix>.model and <prefix>.vocab")
    vocab_size: int = required("pieces in the vocabulary (the delimiters and \\n, \\t included)")
    model_type: str = arg("unigram", "SentencePiece model kind", choices=("unigram", "bpe", "char", "word"))
    json_keys: list = arg(["text"], "keys holding the text, as in preprocess_data.py")
    max_docs: Optional[int] = arg(None, "train on the first N documents only")
    num_threads: Optional[int] = arg(None, "default: all cores")
    character_coverage: float = arg(0.9995, "share of characters covered by pieces; the rest fall back to bytes")
    user_defined_symbols: list = arg([], "extra single-piece symbols (\\n, \\t and the delimiters are always added)",
                                     nargs="*")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of tools/train_tokenizer.py; returns the exit status."""
    import argparse
    import time

    parser = argparse.ArgumentParser(
        prog="tools/train_tokenizer.py",
        description="Train a lossless SentencePiece tokenizer (feedback delimiters built in) on JSONL text.",
    )
    # --json-keys and --max-docs as in the other tools; the old spellings still work.
    add_dataclass_arguments(parser, TokenizerTrainingConfig,
                            aliases={"json_keys": ("--json-key",), "max_docs": ("--max-documents",)})
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    try:
        path = train_sentencepiece(
            args.input, args.model_prefix, args.vocab_size, args.model_type, args.json_keys,
            args.max_docs, args.num_threads, args.user_defined_symbols, args.character_coverage,
        )
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    logger.info(f"Wrote {path} ({args.model_type}, {args.vocab_size} pieces) in {time.perf_counter() - start:.1f} s")
    return 0
