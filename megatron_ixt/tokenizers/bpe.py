"""Byte-level BPE tokenizers through the `tokenizers` library: a Hugging Face `tokenizer.json`
(`HuggingFaceTokenizer`) and OpenAI's GPT-2 files (`GPT2BPETokenizer`), delimiters built in or
appended (`tokenizers.ixt`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from megatron_ixt.format.errors import TokenizerError
from megatron_ixt.format.special_tokens import FEEDBACK_CLOSE, FEEDBACK_OPEN
from megatron_ixt.tokenizers.ixt import IXTTokenizer


class _TokenizersLibrary:
    """Encoding through a Hugging Face ``tokenizers.Tokenizer`` held in ``self._tok``
    (shared by the tokenizer.json and GPT-2 BPE tokenizers). ``self._tok_text`` encodes
    (a copy that cannot match the delimiters when they are built in); ``self._forgeable``
    holds delimiter ids the text model could still reach by its merges (checked after
    every encoding; normally empty)."""

    _forgeable: frozenset = frozenset()

    @property
    def inv_vocab(self) -> dict:
        return {i: t for t, i in self.vocab.items()}

    def tokenize(self, text: str) -> list[int]:
        ids = self._tok_text.encode(text, add_special_tokens=False).ids
        if self._forgeable and self._forgeable.intersection(ids):
            return self._tokenize_around_delimiters(text)
        return ids

    def tokenize_batch(self, texts: list[str]) -> list[np.ndarray]:
        encode = getattr(self._tok_text, "encode_batch_fast", self._tok_text.encode_batch)
        out = [np.asarray(e.ids, dtype=np.int64) for e in encode(texts, add_special_tokens=False)]
        if self._forgeable:
            forgeable = np.fromiter(self._forgeable, dtype=np.int64)
            for i, ids in enumerate(out):
                if np.isin(ids, forgeable).any():
                    out[i] = np.asarray(self._tokenize_around_delimiters(texts[i]), dtype=np.int64)
        return out

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Ids of ``text`` as ``tokenize`` gives them (special tokens such as a chat
        template's ``<|im_start|>`` recognised, the delimiters not) and each token's first
        character in ``text`` (the chat encoder's loss mask, ``tokenizers/chat.py``)."""
        encoding = self._tok_text.encode(text, add_special_tokens=False)
        if self._forgeable and self._forgeable.intersection(encoding.ids):
            raise TokenizerError("this tokenizer's merges reach a feedback delimiter: it cannot encode chat turns")
        return encoding.ids, [start for start, _ in encoding.offsets]

    def _tokenize_around_delimiters(self, text: str) -> list[int]:
        # The model's vocabulary itself reaches a delimiter piece: encode the text between
        # the delimiter strings as usual and each delimiter string one character at a time.
        ids, rest = [], text
        while rest:
            found = [(rest.find(t), t) for t in (FEEDBACK_OPEN, FEEDBACK_CLOSE) if t in rest]
            position, token = min(found) if found else (len(rest), "")
            if position:
                ids += self._tok_text.encode(rest[:position], add_special_tokens=False).ids
            for char in token:
                ids += self._tok_text.encode(char, add_special_tokens=False).ids
            rest = rest[position + len(token):]
        return ids

    def _decode_text(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)


def _without_added_tokens(tokenizer_json: str, contents: Sequence[str]):
    """The tokenizer of `tokenizer_json` with the added tokens `contents` removed, so that
    text is never matched against them (their ids stay as they are in the original)."""
    from tokenizers import Tokenizer

    with open(tokenizer_json, encoding="utf-8") as f:
        spec = json.load(f)
    spec["added_tokens"] = [t for t in spec.get("added_tokens", []) if t.get("content") not in contents]
    return Tokenizer.from_str(json.dumps(spec))


class HuggingFaceTokenizer(_TokenizersLibrary, IXTTokenizer):
    """A Hugging Face `tokenizers` model (`tokenizer.json`), encoded without special tokens."""

    tokenizer_type = "HuggingFaceTokenizer"

    EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|eos|>")
    """Tried in order when no `tokenizer_config.json` names the `eos_token`."""

    def __init__(self, path: str):
        super().__init__(path)
        from tokenizers import Tokenizer

        json_path = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        self._files = {"tokenizer_model": json_path}
        try:
            self._tok = Tokenizer.from_file(json_path)
        except Exception as error:  # the Rust library raises a bare Exception
            raise TokenizerError(f"cannot load Hugging Face tokenizer {json_path}: {error}") from None
        self._tok_text = self._tok
        self._eod = self._find_eod(Path(json_path).parent)
        self.added_bos = self._find_added_bos(Path(json_path).parent)
        ids = {token: self._tok.token_to_id(token) for token in (FEEDBACK_OPEN, FEEDBACK_CLOSE)}
        # Ids can have gaps (added tokens placed anywhere): append after the highest one.
        self._base_size = max(self._tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        if None in ids.values():
            self._append_delimiters(self._base_size)
        else:
            self._set_delimiters(ids[FEEDBACK_OPEN], ids[FEEDBACK_CLOSE])
            self.delimiter_source = "builtin"
            self._tok_text = _without_added_tokens(json_path, (FEEDBACK_OPEN, FEEDBACK_CLOSE))
            self._forgeable = frozenset(i for i in ids.values() if self._tok_text.id_to_token(i) is not None)

    def _find_eod(self, folder: Path) -> Optional[int]:
        config = folder / "tokenizer_config.json"
        names = list(self.EOD_CANDIDATES)
        if config.is_file():
            eos = json.loads(config.read_text()).get("eos_token")
            if isinstance(eos, dict):
                eos = eos.get("content")
            if isinstance(eos, str):
                names.insert(0, eos)
        for name in names:
            token_id = self._tok.token_to_id(name)
            if token_id is not None:
                return token_id
        return None

    @property
    def vocab_size(self) -> int:
        return self._base_size + len(self._extra)

    @property
    def vocab(self) -> dict:
        return {**self._tok.get_vocab(with_added_tokens=True), **{t: i for i, t in self._extra.items()}}

    def _find_added_bos(self, folder: Path) -> Optional[int]:
        """The token the tokenizer's own encoding puts before a text (its post-processor's
        BOS, as Llama 2/3 tokenizers add; the ``add_bos_token`` of its tokenizer_config.json),
        or None when it adds nothing before (SmolLM2, GPT-2 style)."""
        plain = self._tok.encode("a", add_special_tokens=False).ids
        full = self._tok.encode("a", add_special_tokens=True).ids
        if len(full) > len(plain) and full[len(full) - len(plain):] == plain:
            return full[0]
        config = folder / "tokenizer_config.json"
        settings = json.loads(config.read_text()) if config.is_file() else {}
        bos = settings.get("bos_token")
        bos = bos.get("content") if isinstance(bos, dict) else bos
        if settings.get("add_bos_token") and isinstance(bos, str):
            return self._tok.token_to_id(bos)
        return None

    @property
    def bos(self) -> int:
        if self.added_bos is None:
            raise TokenizerError(f"the tokenizer {self._files['tokenizer_model']} adds no BOS token")
        return self.added_bos

    @property
    def eod(self) -> int:
        if self._eod is None:
            raise TokenizerError(
                f"the tokenizer {self._files['tokenizer_model']} has none of {', '.join(self.EOD_CANDIDATES)} "
                f"and no tokenizer_config.json eos_token: it has no end-of-document token"
            )
        return self._eod


class GPT2BPETokenizer(_TokenizersLibrary, IXTTokenizer):
    """OpenAI's GPT-2 byte-level BPE from encoder.json + vocab.bpe (Rust `tokenizers` BPE).

    The two delimiters get the ids right after the vocabulary (see the module docstring).
    """

    tokenizer_type = "GPT2BPETokenizer"

    def __init__(self, vocab_file: str, merge_file: str):
        super().__init__(vocab_file, merge_file)
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        self._files = {"vocab_file": vocab_file, "merge_file": merge_file}
        try:
            with open(vocab_file, encoding="utf-8") as f:
                self._encoder = json.load(f)
            self._tok = Tokenizer(models.BPE.from_file(vocab_file, merge_file))
        except Exception as error:
            raise TokenizerError(f"cannot load GPT-2 BPE files {vocab_file} / {merge_file}: {error}") from None
        # Same pre-tokenization regex and byte mapping as OpenAI's encoder (and Megatron-LM's
        # gpt2_tokenization.py); no prefix space, so ids match token for token.
        self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self._tok.decoder = decoders.ByteLevel()
        self._tok_text = self._tok
        if "<|endoftext|>" not in self._encoder:
            raise TokenizerError(f"{vocab_file} has no '<|endoftext|>' token: not a GPT-2 vocabulary")
        self._eod = self._encoder["<|endoftext|>"]
        self._base_size = len(self._encoder)
        self._append_delimiters(self._base_size)

    @property
    def vocab_size(self) -> int:
        return self._base_size + len(self._extra)

    @property
    def vocab(self) -> dict:
        return {**self._encoder, **{t: i for i, t in self._extra.items()}}

    @property
    def eod(self) -> int:
        return self._eod
