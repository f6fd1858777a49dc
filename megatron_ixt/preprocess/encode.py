"""Worker side of preprocessing: one batch of raw lines -> one token shard per json key.

A worker parses and validates each line (`document.py`), computes its quality level
(`levels.py`), renders and tokenizes its prefix (`prefixes.py`), tokenizes all texts of the
batch in one library call, lays each document out as

    [<|feedback|> prefix <|/feedback|>] text [eod]

and writes the tokens of the batch to a shard file. It sends back only the small index
arrays and counts; the main process appends the shards in input order (`indexed_io.py`).
Doing the writing here, not in the main process, is what keeps the main process from being
the bottleneck (it is in Megatron-LM's tool, where it receives and writes every document).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from megatron_ixt.config.schema import TokenizerConfig
from megatron_ixt.format.document import Document, DocumentSpec, parse_document_line
from megatron_ixt.format.errors import DocumentError
from megatron_ixt.format.indexed_io import Shard, write_shard_bin
from megatron_ixt.format.levels import NUM_LEVELS, QualityThresholds
from megatron_ixt.format.prefixes import load_template, prefix_ids_of_texts
from megatron_ixt.format.sources import LineBatch
from megatron_ixt.format.special_tokens import FEEDBACK_CLOSE, FEEDBACK_OPEN
from megatron_ixt.tokenizers.build import tokenizer_from_config
from megatron_ixt.tokenizers.ixt import NullTokenizer

MAX_REPORTED_ERRORS = 10
"""How many skipped lines are listed (all are counted)."""


@dataclass(frozen=True)
class EncodeSettings:
    """Everything a worker needs; picklable, so that workers can be spawned as well as forked."""

    tokenizer: TokenizerConfig
    spec: DocumentSpec
    template: str
    thresholds: QualityThresholds
    append_eod: bool
    skip_invalid: bool
    shard_dir: str
    dtype: str
    prepend_bos: bool = False
    sft: bool = False
    """Conversations (``encode_sft.ConversationEncoder``) instead of documents."""
    seq_length: Optional[int] = None
    """SFT: the longest conversation is ``seq_length + 1`` tokens (None: no limit)."""
    overlong: str = "truncate"
    """SFT: what a longer conversation gets: 'truncate' (counted) or 'refuse' (an error naming its line)."""


@dataclass
class KeyStats:
    """Counts for one json key of one batch (summed into that key's `.meta.json`)."""

    sequences: int = 0
    tokens: int = 0
    prefix_tokens: int = 0
    prefixed_documents: int = 0
    empty_documents: int = 0
    loss_tokens: int = 0
    """SFT: tokens in the loss (assistant turns, in the conditioned variant)."""
    truncated: int = 0
    """SFT: conversations stored without their trailing turns (``--overlong truncate``)."""
    dropped: int = 0
    """SFT: conversations left out: not even their first assistant turn fits (``truncate``),
    or they do not fit (``--overlong drop``)."""

    def add(self, other: "KeyStats") -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class DocumentCounts:
    """What one batch counted; a run's summary (`pipeline.PreprocessSummary`) adds up those
    of all its batches."""

    lines: int = 0
    nbytes: int = 0
    documents: int = 0
    annotated: int = 0
    level_counts: list[int] = field(default_factory=lambda: [0] * (NUM_LEVELS + 1))
    documents_with_delimiter_text: int = 0
    skipped: int = 0
    skipped_examples: list[dict] = field(default_factory=list)
    """The first `MAX_REPORTED_ERRORS` skipped lines (all are counted in `skipped`)."""
    stats: dict[str, KeyStats] = field(default_factory=dict)

    def add(self, other: "DocumentCounts") -> None:
        self.lines += other.lines
        self.nbytes += other.nbytes
        self.documents += other.documents
        self.annotated += other.annotated
        self.level_counts = [a + b for a, b in zip(self.level_counts, other.level_counts)]
        self.documents_with_delimiter_text += other.documents_with_delimiter_text
        self.skipped += other.skipped
        room = MAX_REPORTED_ERRORS - len(self.skipped_examples)
        self.skipped_examples.extend(other.skipped_examples[:room])
        for key, stats in other.stats.items():
            self.stats.setdefault(key, KeyStats()).add(stats)


@dataclass
class BatchResult(DocumentCounts):
    """What a worker sends back for one batch."""

    index: int = 0
    error: Optional[str] = None
    """Message of the first bad line when not skipping; the run stops on it."""
    shards: dict[str, Shard] = field(default_factory=dict)
    normalized_scores: Optional[np.ndarray] = None
    """First pass of --quality-thresholds quantile only."""


class _BadDocument(Exception):
    def __init__(self, position: int, error: DocumentError):
        self.position, self.error = position, error


class BatchEncoder:
    """Turns `LineBatch`es into shards. One instance per worker process."""

    def __init__(self, settings: EncodeSettings):
        self.settings = settings
        self.template = load_template(settings.template)
        self.tokenizer = tokenizer_from_config(settings.tokenizer, require_delimiters=self.template.kind != "none")
        self.dtype = np.dtype(settings.dtype)
        self.vocab_size = self.tokenizer.vocab_size
        self.check_id_range = isinstance(self.tokenizer, NullTokenizer)
        self.eod = np.array([self.tokenizer.eod], dtype=np.int64) if settings.append_eod else None
        self.bos = np.array([self.tokenizer.bos], dtype=np.int64) if settings.prepend_bos else None
        self._level_prefix_cache: dict[str, np.ndarray] = {}
        self._delimiter_lines: set[int] = set()

    # -- parsing ------------------------------------------------------------------------

    def _parse(self, batch: LineBatch, result: BatchResult) -> Optional[list[tuple[int, Document]]]:
        """Valid documents with their line numbers; None when a bad line stops the run."""
        documents = []
        for offset, raw in enumerate(batch.lines):
            line = batch.first_line + offset
            try:
                document = parse_document_line(raw, self.settings.spec, batch.path, line)
            except DocumentError as error:
                if not self._skip(error, result):
                    return None
                continue
            documents.append((line, document))
            # Cheap byte-level pre-check (both delimiters end in "feedback|>"; a JSON escape
            # could hide one), then the exact check on the decoded texts.
            if (b"feedback|>" in raw or b"\\u" in raw) and any(map(_mentions_delimiter, _elements_of_all(document))):
                self._delimiter_lines.add(line)
        return documents

    def _skip(self, error: DocumentError, result: BatchResult) -> bool:
        if not self.settings.skip_invalid:
            result.error = str(error)
            return False
        result.skipped += 1
        if len(result.skipped_examples) < MAX_REPORTED_ERRORS:
            result.skipped_examples.append(error.to_dict())
        return True

    # -- first pass ---------------------------------------------------------------------

    def scores(self, batch: LineBatch) -> BatchResult:
        """Normalized scores of the annotated documents (for quantile thresholds)."""
        result = BatchResult(index=batch.index, lines=len(batch.lines), nbytes=batch.nbytes)
        documents = self._parse(batch, result)
        if documents is None:
            return result
        scores = [d.feedback.normalized_score() for _, d in documents if d.feedback is not None]
        result.normalized_scores = np.asarray(scores, dtype=np.float64)
        result.documents = len(documents)
        return result

    # -- second pass --------------------------------------------------------------------

    def encode(self, batch: LineBatch) -> BatchResult:
        """Parse, tokenize and write the shards of one batch."""
        result = BatchResult(index=batch.index, lines=len(batch.lines), nbytes=batch.nbytes)
        self._delimiter_lines = set()
        documents = self._parse(batch, result)
        if documents is None:
            return result
        while True:
            try:
                tokens_per_key = self._tokenize(documents, batch.path)
                break
            except _BadDocument as bad:
                # Rare: a text the tokenizer rejects (NullTokenizer given words, token ids out
                # of range). Drop that document from every key so the keys stay aligned.
                if not self._skip(bad.error, result):
                    return result
                del documents[bad.position]

        levels = self._levels([doc for _, doc in documents])
        result.documents = len(documents)
        result.documents_with_delimiter_text = sum(line in self._delimiter_lines for line, _ in documents)
        result.annotated = int(np.count_nonzero(levels))
        result.level_counts = np.bincount(levels, minlength=NUM_LEVELS + 1).tolist()
        prefixes = self._prefixes([doc for _, doc in documents], levels)

        for key_index, key in enumerate(self.settings.spec.json_keys):
            shard, stats, tokens = self._assemble(tokens_per_key[key], prefixes, levels)
            if shard.num_tokens:
                shard.bin_path = os.path.join(self.settings.shard_dir, f"b{batch.index:09d}.k{key_index}.bin")
                write_shard_bin(shard.bin_path, tokens)
            result.shards[key] = shard
            result.stats[key] = stats
        return result

    def _tokenize(self, documents: list[tuple[int, Document]], path: str) -> dict[str, list[list[np.ndarray]]]:
        """Per key, per document: the token arrays of its elements (one batched call per key)."""
        out = {}
        for key in self.settings.spec.json_keys:
            flat, counts = [], []
            for _, doc in documents:
                value = doc.texts[key]
                elements = [value] if isinstance(value, str) else value
                flat.extend(elements)
                counts.append(len(elements))
            try:
                encoded = self.tokenizer.tokenize_batch(flat)
            except Exception:
                encoded = None  # find the culprit below, one text at a time
            # Only the NullTokenizer can produce ids outside the vocabulary (its "tokens" are
            # whatever integers the text holds); they would wrap silently in a uint16 file.
            if encoded is None or (self.check_id_range and not self._ids_in_range(encoded)):
                self._find_bad_text(documents, key, path)
            per_doc, start = [], 0
            for n in counts:
                per_doc.append(encoded[start:start + n])
                start += n
            out[key] = per_doc
        return out

    def _ids_in_range(self, arrays: list[np.ndarray]) -> bool:
        nonempty = [a for a in arrays if len(a)]
        if not nonempty:
            return True
        lowest = min(int(a.min()) for a in nonempty)
        highest = max(int(a.max()) for a in nonempty)
        return lowest >= 0 and highest < self.vocab_size

    def _find_bad_text(self, documents, key: str, path: str):
        for position, (line, doc) in enumerate(documents):
            value = doc.texts[key]
            for i, element in enumerate([value] if isinstance(value, str) else value):
                name = key if isinstance(value, str) else f"{key}[{i}]"
                try:
                    ids = np.asarray(self.tokenizer.tokenize(element), dtype=np.int64)
                except Exception as error:
                    raise _BadDocument(position, DocumentError(
                        path, line, name, "text the tokenizer can encode", detail=str(error))) from None
                if not self._ids_in_range([ids]):
                    raise _BadDocument(position, DocumentError(
                        path, line, name, f"token ids within [0, {self.vocab_size})",
                        detail=f"got ids from {ids.min()} to {ids.max()}"))
        raise RuntimeError("batch tokenization failed but no single text fails")  # pragma: no cover

    def _levels(self, documents) -> np.ndarray:
        """int32 per document (or conversation): its quality level, 0 when not annotated."""
        levels = np.zeros(len(documents), dtype=np.int32)
        for i, doc in enumerate(documents):
            if doc.feedback is not None:
                levels[i] = self.settings.thresholds.level(doc.feedback.score, doc.feedback.scale)
        return levels

    def _prefixes(self, documents: list[Document], levels: np.ndarray) -> list[Optional[np.ndarray]]:
        """Per document: the full prefix ids (delimiters included), or None."""
        prefixes: list[Optional[np.ndarray]] = [None] * len(documents)
        if self.template.kind == "none":
            return prefixes
        to_tokenize, positions = [], []
        for i, doc in enumerate(documents):
            if doc.feedback is None:
                continue
            text = self.template.render(doc.feedback, int(levels[i]))
            cached = self._level_prefix_cache.get(text)
            if cached is not None:
                prefixes[i] = cached
            else:
                to_tokenize.append(text)
                positions.append(i)
        if to_tokenize:
            tokenized = prefix_ids_of_texts(self.tokenizer, self.template, to_tokenize)  # budget and delimiters
            for i, text, ids in zip(positions, to_tokenize, tokenized):
                prefixes[i] = ids
                if self.template.kind == "quality":
                    # Only five distinct quality prefixes exist: tokenize each once per worker.
                    self._level_prefix_cache[text] = prefixes[i]
        return prefixes

    def _assemble(self, per_doc: list[list[np.ndarray]], prefixes, levels) -> tuple[Shard, KeyStats, np.ndarray]:
        """Lay out the sequences of one key exactly as Megatron-LM's tool does, plus prefixes."""
        stats = KeyStats()
        pieces, lengths, side = [], [], []
        sequences_per_document = np.zeros(len(per_doc), dtype=np.int32)
        for j, elements in enumerate(per_doc):
            # Megatron-LM drops elements that tokenize to nothing; an empty text gives a
            # document without sequences (and then without prefix: it would condition nothing).
            nonempty = [ids for ids in elements if len(ids)]
            if not nonempty:
                stats.empty_documents += 1
                continue
            sequences_per_document[j] = len(nonempty)
            prefix = prefixes[j]
            prefix_length = 0 if prefix is None else len(prefix)
            if prefix_length:
                stats.prefixed_documents += 1
                stats.prefix_tokens += prefix_length
            last = len(nonempty) - 1
            for k, ids in enumerate(nonempty):
                length = len(ids)
                if k == 0 and prefix_length:
                    pieces.append(prefix)
                    length += prefix_length
                if k == 0 and self.bos is not None:
                    # After the prefix: the side file's prefix must start the document.
                    pieces.append(self.bos)
                    length += 1
                pieces.append(ids)
                if k == last and self.eod is not None:
                    pieces.append(self.eod)
                    length += 1
                lengths.append(length)
                side.append((prefix_length if k == 0 else 0, levels[j]))
        tokens = np.concatenate(pieces).astype(self.dtype) if pieces else np.zeros(0, self.dtype)
        stats.sequences = len(lengths)
        stats.tokens = int(tokens.size)
        shard = Shard(
            bin_path=None,
            num_tokens=int(tokens.size),
            sequence_lengths=np.asarray(lengths, dtype=np.int32),
            sequences_per_document=sequences_per_document,
            side=np.asarray(side, dtype=np.int32).reshape(-1, 2),
        )
        return shard, stats, tokens


def _elements_of_all(doc: Document):
    for value in doc.texts.values():
        if isinstance(value, str):
            yield value
        else:
            yield from value
    if doc.feedback is not None and doc.feedback.critique:
        yield doc.feedback.critique


def _mentions_delimiter(text: str) -> bool:
    # A document (or critique) that quotes a delimiter string is encoded as ordinary text
    # (the tokenizers never produce delimiter ids from text); counted in the .meta.json so
    # that such documents do not go unnoticed. `"<|" in text` is a fast C-level pre-check.
    return "<|" in text and (FEEDBACK_OPEN in text or FEEDBACK_CLOSE in text)
