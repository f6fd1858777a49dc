"""SentencePiece models (`--tokenizer-type SentencePieceTokenizer`): ids as megatron-core's
(non-legacy) SentencePiece tokenizer, delimiters built in or appended (`tokenizers.ixt`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from megatron_ixt.format.errors import TokenizerError
from megatron_ixt.format.special_tokens import FEEDBACK_CLOSE, FEEDBACK_OPEN
from megatron_ixt.tokenizers.ixt import IXTTokenizer


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
