"""Tokenizers with Megatron-LM's type names, plus the two feedback delimiter ids.

`tokenizer_from_config(TokenizerConfig)` (the spec every entry point carries, `config.schema`)
or, by name, `build_tokenizer(tokenizer_type, tokenizer_model=None, vocab_file=None,
merge_file=None, vocab_size=None)` returns one of:

| type                     | files                                  | eod                       |
|--------------------------|----------------------------------------|---------------------------|
| `SentencePieceTokenizer` | `tokenizer_model` (`.model`)           | the model's `eos_id()`    |
| `HuggingFaceTokenizer`   | `tokenizer_model` (`tokenizer.json` or its folder) | its end-of-text token |
| `GPT2BPETokenizer`       | `vocab_file` (encoder.json) + `merge_file` (vocab.bpe) | `<|endoftext|>` |
| `NullTokenizer`          | none; `vocab_size`                     | `vocab_size`              |

Each subclasses megatron-core's legacy tokenizer interface (`MegatronLegacyTokenizer`, the
one megatron-core 0.16's `GPTDataset` expects; reproduced in `tokenizers.base` so that
preprocessing never imports megatron-core) and adds `feedback_open_id` / `feedback_close_id` and a batched
`tokenize_batch` used by preprocessing.

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
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from megatron_ixt.config.schema import TOKENIZER_TYPES, TokenizerConfig
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
        """'builtin' (the model's own pieces), 'appended' (extra ids) or 'none'."""

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


def _sentencepiece_text_only(model_file: str, piece_ids: Sequence[int]):
    """A copy of a SentencePiece model in which `piece_ids` are control symbols: same ids,
    but text never matches them (SentencePiece matches user-defined symbols anywhere in the
    text and may reach normal pieces by merges; control symbols, like <s>, never)."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_file, "rb") as f:
        proto.ParseFromString(f.read())
    for i in piece_ids:
        proto.pieces[i].type = sentencepiece_model_pb2.ModelProto.SentencePiece.CONTROL
    processor = sentencepiece.SentencePieceProcessor()
    processor.LoadFromSerializedProto(proto.SerializeToString())
    return processor


class SentencePieceTokenizer(IXTTokenizer):
    """A SentencePiece model; ids as megatron-core's (non-legacy) SentencePiece tokenizer."""

    tokenizer_type = "SentencePieceTokenizer"

    def __init__(self, model_file: str, num_threads: int = 1):
        super().__init__(model_file)
        import sentencepiece

        self._files = {"tokenizer_model": model_file}
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
        except (OSError, RuntimeError, TypeError) as error:
            raise TokenizerError(f"cannot load SentencePiece model {model_file}: {error}") from None
        # Preprocessing parallelizes over processes; one thread each avoids oversubscription.
        self.num_threads = num_threads
        ids = {}
        for token in (FEEDBACK_OPEN, FEEDBACK_CLOSE):
            piece_id = self._sp.piece_to_id(token)
            ids[token] = piece_id if self._sp.id_to_piece(piece_id) == token else None
        self._sp_text = self._sp
        if None in ids.values():
            # A model trained elsewhere (or with only one of them): both get extra ids, so
            # that the pair is always consistent.
            self._append_delimiters(self._sp.get_piece_size())
        else:
            self._set_delimiters(ids[FEEDBACK_OPEN], ids[FEEDBACK_CLOSE])
            self.delimiter_source = "builtin"
            self._sp_text = _sentencepiece_text_only(model_file, list(ids.values()))
        self._vocab = None

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size() + len(self._extra)

    @property
    def vocab(self) -> dict:
        if self._vocab is None:
            self._vocab = {self._sp.id_to_piece(i): i for i in range(self._sp.get_piece_size())}
            self._vocab.update({t: i for i, t in self._extra.items()})
        return self._vocab

    @property
    def inv_vocab(self) -> dict:
        return {i: piece for piece, i in self.vocab.items()}

    def tokenize(self, text: str) -> list[int]:
        return self._sp_text.encode_as_ids(text)

    def tokenize_batch(self, texts: list[str]) -> list[np.ndarray]:
        # One C++ call for the whole batch, returning int32 arrays: no Python int lists.
        return self._sp_text.encode(texts, out_type="numpy", num_threads=self.num_threads)

    def _decode_text(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Ids of ``text`` (as ``tokenize``) and each token's first character in it."""
        pairs = [(p.id, p.begin) for p in self._sp_text.encode(text, out_type="proto").pieces]
        if not pairs:
            return [], []
        ids, begins = zip(*pairs)
        # SentencePiece reports byte offsets into the UTF-8 text: map them to characters (a
        # character starts at every byte that is not a UTF-8 continuation byte).
        raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        char_of_byte = np.append(np.cumsum((raw & 0xC0) != 0x80) - 1, len(text))
        return list(ids), char_of_byte[np.minimum(begins, len(raw))].tolist()

    @property
    def eod(self) -> int:
        eos = self._sp.eos_id()
        if eos < 0:
            raise TokenizerError(f"the SentencePiece model {self._files['tokenizer_model']} has no eos piece to use as eod")
        return eos

    @property
    def bos(self) -> int:
        return self._sp.bos_id()

    @property
    def pad(self) -> int:
        return self._sp.pad_id()


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


def build_tokenizer(
    tokenizer_type: str,
    tokenizer_model: Optional[str] = None,
    vocab_file: Optional[str] = None,
    merge_file: Optional[str] = None,
    vocab_size: Optional[int] = None,
    *,
    require_delimiters: bool = True,
) -> IXTTokenizer:
    """Build a tokenizer by Megatron-LM type name (see the module docstring).

    Raises `TokenizerError` with a readable message when a file is missing or unreadable.
    Every tokenizer type has the feedback delimiters (built in or appended), so
    `require_delimiters` only matters for subclasses that might lack them.
    """

    def need(value, flag):
        if value is None:
            raise TokenizerError(f"{tokenizer_type} needs {flag}")
        if flag != "--vocab-size" and not os.path.exists(value):
            raise TokenizerError(f"{tokenizer_type}: {flag} {value} does not exist")
        return value

    if tokenizer_type == "SentencePieceTokenizer":
        tokenizer = SentencePieceTokenizer(need(tokenizer_model, "--tokenizer-model"))
    elif tokenizer_type == "HuggingFaceTokenizer":
        tokenizer = HuggingFaceTokenizer(need(tokenizer_model, "--tokenizer-model"))
    elif tokenizer_type == "GPT2BPETokenizer":
        tokenizer = GPT2BPETokenizer(need(vocab_file, "--vocab-file"), need(merge_file, "--merge-file"))
    elif tokenizer_type == "NullTokenizer":
        tokenizer = NullTokenizer(need(vocab_size, "--vocab-size"))
    else:
        raise TokenizerError(
            f"unknown tokenizer type {tokenizer_type!r}: expected one of {', '.join(TOKENIZER_TYPES)}"
        )
    if require_delimiters:
        tokenizer.check_feedback_delimiters()
    return tokenizer


def tokenizer_from_config(config: TokenizerConfig, *, require_delimiters: bool = True) -> IXTTokenizer:
    """The tokenizer a `TokenizerConfig` names (training's `cfg.tokenizer`, preprocessing's
    `PreprocessConfig.tokenizer`, the one a checkpoint was trained with)."""
    return build_tokenizer(config.tokenizer_type, config.tokenizer_model, config.vocab_file, config.merge_file,
                           config.vocab_size, require_delimiters=require_delimiters)
