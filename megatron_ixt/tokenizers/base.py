"""The tokenizer interface megatron-core's datasets use, without importing megatron-core.

megatron-core's legacy base (`megatron.core.datasets.megatron_tokenizer.MegatronLegacyTokenizer`)
lives behind `megatron.core`'s package import, which pulls in torch and most of the library
(about 5 s). Preprocessing, tokenizer training and the SLURM shards need none of that, so
`megatron_ixt.tokenizers.build` subclasses this light copy of the interface instead.
megatron-core only duck-types its tokenizer (`GPTDataset` reads `eod`, `vocab_size`,
`unique_identifiers`; nothing checks the class), and this base gives the same attributes,
the same `unique_identifiers` / `unique_description` (so dataset cache hashes do not change)
and the same NotImplementedError for the optional ones. tests/data/test_tokenizers.py
checks it against megatron-core's class.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:  # annotations only: this module stays light (tools' --help imports it)
    import numpy as np



class LegacyTokenizerBase(ABC):
    """Same interface and identifiers as megatron-core's `MegatronLegacyTokenizer`."""

    def __init__(self, *tokenizer_paths: str, **tokenizer_options: Any):
        self.unique_identifiers = OrderedDict()
        self.unique_identifiers["class"] = type(self).__name__
        self.unique_identifiers["tokenizer_path"] = list(tokenizer_paths)
        for option in tokenizer_options:
            self.unique_identifiers[option] = str(tokenizer_options[option])
        self.unique_description = json.dumps(self.unique_identifiers, indent=4)
        super().__init__()

    @abstractmethod
    def tokenize(self, text: str) -> np.ndarray:
        """Text -> token ids."""

    def detokenize(self, ids: np.ndarray) -> str:
        raise NotImplementedError(f"{type(self).__name__} has no method 'detokenize'")

    def offsets(self, ids: list[int], text: str) -> list[int]:
        raise NotImplementedError(f"{type(self).__name__} has no method 'offsets'")

    @property
    @abstractmethod
    def vocab(self):
        """Token text -> id."""

    @property
    @abstractmethod
    def inv_vocab(self):
        """Id -> token text."""

    @property
    @abstractmethod
    def vocab_size(self):
        """Number of ids."""

    def _missing(self, name: str):
        raise NotImplementedError(f"{type(self).__name__} has no attribute '{name}'")

    cls = property(lambda self: self._missing("cls"))
    sep = property(lambda self: self._missing("sep"))
    pad = property(lambda self: self._missing("pad"))
    eod = property(lambda self: self._missing("eod"))
    bos = property(lambda self: self._missing("bos"))
    eos = property(lambda self: self._missing("eos"))
    mask = property(lambda self: self._missing("mask"))


def document_start_ids(tokenizer, convention: Optional[str]) -> list[int]:
    """The ids before a document's first token (its feedback prefix, or its text) in the
    model's context, by the model's ``--document-start`` convention: ``eod`` (this project's
    packed pretraining data: the previous document's EOD), ``bos`` (the tokenizer's BOS) or
    ``none`` (an imported model whose tokenizer adds nothing before a text). None: a
    checkpoint saved before the convention was recorded, all trained on EOD-separated data."""
    if convention in ("eod", None):
        return [tokenizer.eod]
    if convention == "bos":
        return [tokenizer.bos]
    if convention == "none":
        return []
    raise ValueError(f"document start {convention!r}: expected eod, bos or none")


def document_context(tokenizer, convention: Optional[str], prefix: Sequence[int] = ()) -> list[int]:
    """The ids before a document's text in the model's context, its feedback ``prefix``
    included, in the order its pretraining data has them (``tools/preprocess_data.py``):
    ``[EOD] prefix`` (eod), ``prefix [BOS]`` (bos: the prefix starts the document, the BOS
    follows it, as ``--prepend-bos`` writes it), ``prefix`` (none)."""
    start = document_start_ids(tokenizer, convention)
    return [*prefix, *start] if convention == "bos" else [*start, *prefix]
