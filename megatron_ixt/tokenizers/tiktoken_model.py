"""tiktoken vocabularies (`--tokenizer-type TikTokenizer`): ids as Megatron-LM's
`CustomTikTokenizer` (megatron/training/tokenizer/tokenizer.py at core_v0.16.1).

`--tokenizer-model` is the JSON file Megatron-LM's `reload_mergeable_ranks` reads: a list of
``{"rank": i, "token_bytes": base64, "token_str": ...}`` in rank order, the first 256 the
single bytes. The ids:

* ``0 .. num_special_tokens - 1``: the special tokens (``--tiktoken-special-tokens``, by
  default ``<unk> <s> </s>``), the rest of that range filled with ``<SPECIAL_i>``;
* ``num_special_tokens + rank``: the vocabulary's tokens, cut to ``vocab_size -
  num_special_tokens`` ranks.

``vocab_size`` is ``--vocab-size`` when given; otherwise Megatron-LM's fallback, 2**17,
which cuts a larger vocabulary file to 131072 ids. A file with fewer ranks than that fails
Megatron-LM's assertion; here it gives ranks + num_special_tokens. eod (and eos) is ``</s>``,
bos ``<s>``. Text is encoded with `encode_ordinary`, as Megatron-LM's `tokenize`: no special
token is ever matched in text. (megatron-core's `TikTokenTokenizer`, which Megatron-LM uses
without ``--legacy-tokenizer``, gives the same ids, except that it turns the text "</s>"
into the eod; its default special tokens add ``<mask> <pad> <cls> <sep>`` at ids 3-6.)

The feedback delimiters take two of the reserved ids nobody else uses, the last two
``<SPECIAL_i>`` slots (``num_special_tokens - 2`` and ``- 1``), so the vocabulary size stays
Megatron-LM's; ``--tiktoken-special-tokens`` naming both gives them those ids instead, and
with no free slot left they are appended after the vocabulary as for other tokenizers.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from megatron_ixt.format.errors import TokenizerError
from megatron_ixt.format.special_tokens import FEEDBACK_CLOSE, FEEDBACK_OPEN
from megatron_ixt.tokenizers.ixt import IXTTokenizer

PATTERNS = {
    "v1": r"[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
    "v2": "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|"
          "[^\\r\\n\\p{L}\\p{N}]?"
          "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|"
          "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
}
"""Megatron-LM's ``PATTERN_TIKTOKEN`` (v1) and ``PATTERN_TIKTOKEN_V2`` (v2)."""

DEFAULT_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
"""`CustomTikTokenizer`'s special tokens when none are given; a given list must hold them."""

FALLBACK_VOCAB_SIZE = 2 ** 17
"""Megatron-LM's vocabulary size of a TikTokenizer without ``--vocab-size``."""

INSTALL_HINT = "pip install 'megatron_ixt[tiktoken]'"


def read_mergeable_ranks(path: str, max_vocab: Optional[int] = None) -> dict[bytes, int]:
    """Token bytes -> rank of a Megatron-LM tiktoken JSON vocabulary (its
    `reload_mergeable_ranks`), the first ``max_vocab`` ranks; `TokenizerError` naming the file
    and the entry when it is not one."""
    if not path.endswith(".json"):
        raise TokenizerError(f"TikTokenizer: --tokenizer-model {path} is not a .json tiktoken vocabulary")
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except (OSError, ValueError) as error:
        raise TokenizerError(f"TikTokenizer: cannot read --tokenizer-model {path}: {error}") from None
    if not isinstance(entries, list):
        raise TokenizerError(f"TikTokenizer: {path} is not a list of {{rank, token_bytes, token_str}} entries")
    ranks: dict[bytes, int] = {}
    for i, entry in enumerate(entries[:max_vocab]):
        if not isinstance(entry, dict) or entry.keys() != {"rank", "token_bytes", "token_str"} or entry["rank"] != i:
            raise TokenizerError(f"TikTokenizer: {path} entry {i}: expected {{rank: {i}, token_bytes, token_str}}")
        try:
            token = base64.b64decode(entry["token_bytes"], validate=True)
        except (ValueError, TypeError):
            raise TokenizerError(f"TikTokenizer: {path} entry {i}: token_bytes is not base64") from None
        if i < 256 and token != bytes([i]):
            raise TokenizerError(f"TikTokenizer: {path} entry {i}: the first 256 ranks must be the single bytes")
        if token in ranks:
            raise TokenizerError(f"TikTokenizer: {path} entry {i}: the token of rank {ranks[token]} again")
        ranks[token] = i
    return ranks


def _special_token_list(num_special_tokens: int, special_tokens: Optional[Sequence[str]]) -> tuple[list[str], int]:
    """The ``num_special_tokens`` names of ids 0.. as `CustomTikTokenizer` builds them, and
    how many of them are named (the rest are ``<SPECIAL_i>`` fillers)."""
    tokens = list(DEFAULT_SPECIAL_TOKENS if special_tokens is None else special_tokens)
    if len(set(tokens)) != len(tokens):
        raise TokenizerError(f"--tiktoken-special-tokens must be distinct, got {tokens}")
    missing = [t for t in DEFAULT_SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise TokenizerError(f"--tiktoken-special-tokens must include {' '.join(DEFAULT_SPECIAL_TOKENS)} "
                             f"(missing {' '.join(missing)})")
    if len(tokens) > num_special_tokens:
        raise TokenizerError(f"--tiktoken-num-special-tokens {num_special_tokens} is fewer than the "
                             f"{len(tokens)} --tiktoken-special-tokens")
    return tokens + [f"<SPECIAL_{i}>" for i in range(len(tokens), num_special_tokens)], len(tokens)


class TikTokenizer(IXTTokenizer):
    """A Megatron-LM tiktoken vocabulary (see the module docstring)."""

    tokenizer_type = "TikTokenizer"

    def __init__(self, path: str, pattern: str, num_special_tokens: int = 1000,
                 special_tokens: Optional[Sequence[str]] = None, vocab_size: Optional[int] = None):
        if pattern not in PATTERNS:
            raise TokenizerError(f"--tiktoken-pattern: expected v1 or v2, got {pattern!r}")
        # Megatron-LM's identifiers (the full pattern, the flags as given): same dataset cache keys.
        super().__init__(path, pattern=PATTERNS[pattern], vocab_size=vocab_size,
                         num_special_tokens=num_special_tokens, special_tokens=special_tokens)
        try:
            import tiktoken
        except ImportError:
            raise TokenizerError(f"--tokenizer-type TikTokenizer needs the tiktoken package: {INSTALL_HINT}") from None

        self._files = {"tokenizer_model": path}
        self.pattern = pattern
        self.num_special_tokens = num_special_tokens
        specials, named = _special_token_list(num_special_tokens, special_tokens)
        if vocab_size is not None and vocab_size <= num_special_tokens:
            raise TokenizerError(f"TikTokenizer: --vocab-size {vocab_size} leaves no id for the vocabulary after "
                                 f"--tiktoken-num-special-tokens {num_special_tokens}")
        inner = (vocab_size or FALLBACK_VOCAB_SIZE) - num_special_tokens
        ranks = read_mergeable_ranks(path, max_vocab=inner)
        if vocab_size is not None and len(ranks) < inner:
            raise TokenizerError(f"TikTokenizer: --vocab-size {vocab_size} needs {inner} ranks after "
                                 f"{num_special_tokens} special tokens, {path} has {len(ranks)}")
        self._size = num_special_tokens + len(ranks)

        builtin = [t in specials for t in (FEEDBACK_OPEN, FEEDBACK_CLOSE)]
        if any(builtin) and not all(builtin):
            raise TokenizerError(f"--tiktoken-special-tokens names one of {FEEDBACK_OPEN} {FEEDBACK_CLOSE}: "
                                 "give both or neither")
        if not all(builtin) and num_special_tokens - named >= 2:
            # The last fillers: a longer --tiktoken-special-tokens list later takes the first ones.
            specials[-2:] = [FEEDBACK_OPEN, FEEDBACK_CLOSE]
        special_ids = {t: i for i, t in enumerate(specials)}
        if FEEDBACK_OPEN in special_ids:
            self._set_delimiters(special_ids[FEEDBACK_OPEN], special_ids[FEEDBACK_CLOSE])
            self.delimiter_source = "builtin" if all(builtin) else "reserved"
        else:
            self._append_delimiters(self._size)

        shifted = {token: rank + num_special_tokens for token, rank in ranks.items()}
        self._model = tiktoken.Encoding(name=Path(path).parent.name or "megatron", pat_str=PATTERNS[pattern],
                                        mergeable_ranks=shifted, special_tokens=special_ids)
        self._special_ids = special_ids
        self._token_to_id: dict = {**shifted, **special_ids}
        self._id_to_token: Optional[dict] = None

    @property
    def vocab_size(self) -> int:
        return self._size + len(self._extra)

    @property
    def vocab(self) -> dict:
        """Megatron-LM's: token bytes -> id for the vocabulary, text -> id for special tokens."""
        return {**self._token_to_id, **{t: i for i, t in self._extra.items()}}

    @property
    def inv_vocab(self) -> dict:
        if self._id_to_token is None:
            self._id_to_token = {i: t for t, i in self.vocab.items()}
        return self._id_to_token

    def tokenize(self, text: str) -> list[int]:
        return self._model.encode_ordinary(text)

    def tokenize_batch(self, texts: list[str]) -> list[np.ndarray]:
        # Preprocessing parallelizes over processes: one thread each.
        return [np.asarray(ids, dtype=np.int64) for ids in self._model.encode_ordinary_batch(texts, num_threads=1)]

    def _decode_text(self, ids: list[int]) -> str:
        return self._model.decode(ids)

    def offsets(self, ids: list[int], text: str) -> list[int]:
        """Each token's first character in the decoded text (Megatron-LM's `offsets`: a token
        that starts inside a multi-byte character counts from that character)."""
        text_len, offsets = 0, []
        for token in self._model.decode_tokens_bytes(ids):
            offsets.append(max(0, text_len - (0x80 <= token[0] < 0xC0)))
            text_len += sum(1 for byte in token if not 0x80 <= byte < 0xC0)
        return offsets

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Ids of ``text`` (as ``tokenize``) and each token's first character in it."""
        ids = self.tokenize(text)
        return ids, self.offsets(ids, text)

    def _special(self, name: str) -> int:
        if name not in self._special_ids:
            raise TokenizerError(f"TikTokenizer: no {name} among --tiktoken-special-tokens")
        return self._special_ids[name]

    @property
    def eod(self) -> int:
        return self._special("</s>")

    @property
    def bos(self) -> int:
        return self._special("<s>")

    @property
    def unk(self) -> int:
        return self._special("<unk>")

    @property
    def pad(self) -> int:
        return self._special("<pad>")

    @property
    def mask(self) -> int:
        return self._special("<mask>")

    def identity(self) -> dict:
        return {**super().identity(), "tiktoken_pattern": self.pattern,
                "tiktoken_num_special_tokens": self.num_special_tokens}
