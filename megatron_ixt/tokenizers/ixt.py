"""The part every tokenizer here shares, and the null tokenizer of mock data.

Text ids are exactly those of megatron-core 0.16.1's own tokenizers (the ones Megatron-LM's
`tools/preprocess_data.py` uses at core_v0.16.1), so that plain documents give
byte-identical datasets. How each kind gets its delimiters:

* SentencePiece / Hugging Face with the delimiters built in (`tools/train_tokenizer.py`
  does that, or `tokenizer.add_special_tokens([...])`): their own ids.
* SentencePiece / Hugging Face without them (any model trained elsewhere): two extra ids
  right after the vocabulary (`base_vocab_size` and `base_vocab_size + 1`), the way
  Megatron-LM appends its special tokens; `vocab_size` is then `base_vocab_size + 2`.
* GPT-2 BPE: OpenAI's vocabulary has no such tokens and is fixed: extra ids 50257 and 50258,
  `vocab_size` 50259.
* TikTokenizer: the last two of Megatron-LM's reserved special-token ids (`tiktoken_model`),
  so `vocab_size` stays Megatron-LM's.
* Null: ids `vocab_size + 1` and `vocab_size + 2` (the eod is `vocab_size`, as in
  Megatron-LM), so this `vocab_size` property is the argument + 3.

No forged delimiters: `tokenize` and `tokenize_batch` never produce a delimiter id. A
delimiter *string* inside a text (a document quoting this README, spam writing
"<|feedback|>Quality: 5/5<|/feedback|>") is encoded as ordinary text, the way tiktoken's
`disallowed_special` and Hugging Face's `split_special_tokens` treat special tokens; only
`prefixes.prefix_token_ids` puts the delimiter ids around a prefix. For a model with
built-in delimiters this takes a second, text-only copy of the model in which the two
pieces cannot be matched (SentencePiece: the pieces become control symbols; tokenizers:
they are dropped from the added tokens); every other text encodes exactly as before.
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional, Sequence

import numpy as np

from megatron_ixt.format.errors import TokenizerError
from megatron_ixt.format.special_tokens import FEEDBACK_CLOSE, FEEDBACK_OPEN
# megatron-core's legacy tokenizer interface without importing megatron-core (start-up time).
from megatron_ixt.tokenizers.base import LegacyTokenizerBase as _MegatronBase


def _sha256_of_files(paths: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class IXTTokenizer(_MegatronBase):
    """Common part: delimiter ids, batched tokenization, identity for the `.meta.json`."""

    tokenizer_type = "?"

    def __init__(self, *paths: str, **options):
        super().__init__(*paths, **options)
        self._files: dict[str, str] = {}
        self._delimiter_ids: dict[str, Optional[int]] = {}
        self._delimiter_problem = ""
        self._extra: dict[int, str] = {}
        """Ids appended after the model's own vocabulary -> their text (the delimiters)."""
        self.delimiter_source = "none"
        """'builtin' (the model's own pieces), 'appended' (extra ids), 'reserved' (ids the
        model reserves for special tokens, unused: TikTokenizer) or 'none'."""

    # -- delimiters ---------------------------------------------------------------------

    def _set_delimiters(self, open_id: Optional[int], close_id: Optional[int], problem: str = ""):
        self._delimiter_ids = {FEEDBACK_OPEN: open_id, FEEDBACK_CLOSE: close_id}
        self._delimiter_problem = problem

    def _append_delimiters(self, base_size: int) -> None:
        """Give the delimiters the two ids right after a vocabulary of `base_size` ids."""
        self._extra = {base_size: FEEDBACK_OPEN, base_size + 1: FEEDBACK_CLOSE}
        self._set_delimiters(base_size, base_size + 1)
        self.delimiter_source = "appended"

    @property
    def has_feedback_delimiters(self) -> bool:
        return None not in self._delimiter_ids.values()

    def check_feedback_delimiters(self) -> None:
        """Raise `TokenizerError` unless both delimiters have ids."""
        if not self.has_feedback_delimiters:
            raise TokenizerError(self._delimiter_problem)

    @property
    def feedback_open_id(self) -> int:
        """Id of `<|feedback|>`."""
        self.check_feedback_delimiters()
        return self._delimiter_ids[FEEDBACK_OPEN]

    @property
    def feedback_close_id(self) -> int:
        """Id of `<|/feedback|>`."""
        self.check_feedback_delimiters()
        return self._delimiter_ids[FEEDBACK_CLOSE]

    @property
    def base_vocab_size(self) -> int:
        """Size of the model's own vocabulary (without appended delimiter ids)."""
        return self.vocab_size - len(self._extra)

    # -- tokenization -------------------------------------------------------------------

    def tokenize_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of several texts at once (subclasses use their library's batch call)."""
        return [np.asarray(self.tokenize(text), dtype=np.int64) for text in texts]

    def detokenize(self, ids) -> str:
        # The delimiter ids are unknown to (or, in the text-only copy, silent in) the
        # underlying model: decode the runs between them and put their text in between.
        by_id = {i: t for t, i in self._delimiter_ids.items() if i is not None}
        pieces, run = [], []
        for i in (int(i) for i in ids):
            if i in by_id:
                pieces.append(self._decode_text(run))
                pieces.append(by_id[i])
                run = []
            else:
                run.append(i)
        pieces.append(self._decode_text(run))
        return "".join(pieces)

    def _decode_text(self, ids: list[int]) -> str:
        raise NotImplementedError

    # -- identity -----------------------------------------------------------------------

    def identity(self) -> dict:
        """Type, files, checksum and ids: what a `.meta.json` records about the tokenizer."""
        files = {flag: os.path.abspath(path) for flag, path in self._files.items()}
        return {
            "type": self.tokenizer_type,
            "files": files,
            "sha256": _sha256_of_files(list(files.values())) if files else None,
            "vocab_size": self.vocab_size,
            "base_vocab_size": self.base_vocab_size,
            "eod": self._eod_or_none(),
            "feedback_open_id": self._delimiter_ids.get(FEEDBACK_OPEN),
            "feedback_close_id": self._delimiter_ids.get(FEEDBACK_CLOSE),
            "delimiters": self.delimiter_source,
        }

    def _eod_or_none(self) -> Optional[int]:
        try:
            return self.eod
        except (TokenizerError, NotImplementedError):
            return None

    @property
    def eos(self) -> int:
        """Megatron-LM's `eos`: the same token as `eod` in every tokenizer here."""
        return self.eod


class NullTokenizer(IXTTokenizer):
    """For mock data: text is space-separated integer ids, as in Megatron-LM."""

    tokenizer_type = "NullTokenizer"

    def __init__(self, vocab_size: int):
        super().__init__(None, vocab_size=vocab_size)
        self._size = int(vocab_size)
        self._set_delimiters(self._size + 1, self._size + 2)
        self.delimiter_source = "appended"

    def tokenize(self, text: str) -> list[int]:
        if not text:
            return []  # Megatron-LM's would fail on int(''); an empty text is an empty document.
        try:
            return [int(x) for x in text.split(" ")]
        except ValueError:
            raise ValueError(
                f"NullTokenizer reads space-separated integers, got {text[:40]!r}"
            ) from None

    def detokenize(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)

    @property
    def vocab_size(self) -> int:
        return self._size + 3

    @property
    def base_vocab_size(self) -> int:
        return self._size + 1  # Megatron-LM's NullTokenizer: the ids and its eod

    @property
    def vocab(self):
        raise NotImplementedError("NullTokenizer has no vocabulary")

    @property
    def inv_vocab(self):
        raise NotImplementedError("NullTokenizer has no vocabulary")

    @property
    def eod(self) -> int:
        return self._size

    def identity(self) -> dict:
        identity = super().identity()
        identity["sha256"] = hashlib.sha256(f"NullTokenizer:{self._size}".encode()).hexdigest()
        return identity
