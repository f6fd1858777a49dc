"""Configuration of `tools/preprocess_data.py`: a typed dataclass and its command line.

The flags are Megatron-LM's (`--input`, `--output-prefix`, `--json-keys`, `--tokenizer-type`,
`--tokenizer-model`, `--vocab-file`, `--merge-file`, `--append-eod`, `--workers`,
`--partitions`, `--log-interval`) plus IXT's (`--feedback-key`, `--prefix-template`,
`--score-scale`, `--quality-thresholds`, `--skip-invalid`). The flag names are derived from
the field names; each field's docstring is its help text.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from megatron_ixt.data.tokenizers import TOKENIZER_TYPES


@dataclass
class PreprocessConfig:
    input: str
    """Input JSONL: a file, a glob (quote it) or a comma-separated list; `.gz` and `.zst` are decompressed."""
    output_prefix: str
    """Output path prefix: writes <prefix>_<key>_document.{bin,idx,ixt.npy,meta.json}."""
    tokenizer_type: str
    """Tokenizer kind (Megatron-LM's names)."""
    json_keys: list[str] = field(default_factory=lambda: ["text"])
    """Keys holding the text; each gets its own complete dataset."""
    tokenizer_model: Optional[str] = None
    """SentencePiece .model, or tokenizer.json (or its folder) for HuggingFaceTokenizer."""
    vocab_file: Optional[str] = None
    """GPT-2 encoder.json."""
    merge_file: Optional[str] = None
    """GPT-2 vocab.bpe (merges)."""
    vocab_size: Optional[int] = None
    """Vocabulary size of the NullTokenizer."""
    append_eod: bool = False
    """Append the tokenizer's end-of-document token to every non-empty document."""
    prepend_bos: bool = False
    """Put the tokenizer's beginning-of-sequence token before every non-empty document's text (after its feedback prefix, if any): the constant document start of a fair baseline for IXT."""
    workers: int = 1
    """Worker processes; each tokenizes and writes its own shards, the main process only merges."""
    partitions: int = 1
    """Accepted for Megatron-LM compatibility. Output is always in input order and does not depend on it: the work is always sharded per batch."""
    log_interval: int = 1000
    """Log a progress line every this many documents."""
    feedback_key: str = "feedback"
    """Key of the feedback object in each line."""
    prefix_template: str = "critique"
    """critique, quality, none, or the path of a template YAML file."""
    score_scale: str = "0,10"
    """MIN,MAX of feedback scores that do not declare their own 'scale'."""
    quality_thresholds: str = "fixed"
    """fixed (fifths of the scale) or quantile (corpus quintiles, computed in a first pass)."""
    skip_invalid: bool = False
    """Skip bad lines (counted and listed in the .meta.json) instead of stopping at the first."""
    batch_size: int = 1024
    """Lines per work unit (shard). Larger batches amortize overhead; smaller ones balance better."""
    keep_sequential_samples: bool = False
    """Accepted for Megatron-LM compatibility; output order always follows the input."""

    def parsed_score_scale(self) -> tuple[float, float]:
        parts = self.score_scale.split(",")
        try:
            low, high = (float(p) for p in parts)
        except ValueError:
            raise ValueError(f"--score-scale: expected MIN,MAX such as 0,10, got {self.score_scale!r}") from None
        if not low < high:
            raise ValueError(f"--score-scale: MIN must be below MAX, got {self.score_scale!r}")
        return low, high

    def validate(self) -> None:
        """Check the values that argparse cannot; raise ValueError naming the flag."""
        self.parsed_score_scale()
        if self.tokenizer_type not in TOKENIZER_TYPES:
            raise ValueError(f"--tokenizer-type: expected one of {', '.join(TOKENIZER_TYPES)}, got {self.tokenizer_type!r}")
        if self.quality_thresholds not in ("fixed", "quantile"):
            raise ValueError(f"--quality-thresholds: expected fixed or quantile, got {self.quality_thresholds!r}")
        for name in ("workers", "partitions", "log_interval", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(self, name)}")
        if len(set(self.json_keys)) != len(self.json_keys):
            raise ValueError(f"--json-keys: keys must be distinct, got {self.json_keys}")
        if self.feedback_key in self.json_keys:
            raise ValueError(f"--feedback-key {self.feedback_key!r} is also one of --json-keys")


_CHOICES = {
    "tokenizer_type": list(TOKENIZER_TYPES),
    "quality_thresholds": ["fixed", "quantile"],
}
_UNSUPPORTED = {
    "split_sentences": "sentence splitting (NLTK) is not supported; documents are one sequence each",
    "keep_newlines": "only meaningful with --split-sentences, which is not supported",
}


def _field_docs() -> dict[str, str]:
    # Field docstrings are not kept at run time; read them from the source once.
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(PreprocessConfig))
    docs, previous = {}, None
    for node in tree.body[0].body:
        if isinstance(node, ast.AnnAssign):
            previous = node.target.id
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and previous:
            docs[previous] = " ".join(str(node.value.value).split())
            previous = None
    return docs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/preprocess_data.py",
        description="Tokenize IXT JSONL documents ([feedback prefix] + text) into megatron-core indexed datasets.",
    )
    docs = _field_docs()
    for f in dataclasses.fields(PreprocessConfig):
        flag = "--" + f.name.replace("_", "-")
        kwargs = {"help": docs.get(f.name, "")}
        if f.type in ("bool", bool):
            kwargs["action"] = "store_true"
        elif f.name == "json_keys":
            kwargs.update(nargs="+", default=["text"])
        else:
            kwargs["type"] = int if f.type in ("int", "Optional[int]") else str
            if f.default is dataclasses.MISSING:
                kwargs["required"] = True
            else:
                kwargs["default"] = f.default
                kwargs["help"] += f" (default: {f.default})"
        if f.name in _CHOICES:
            kwargs["choices"] = _CHOICES[f.name]
        parser.add_argument(flag, **kwargs)
    for name, why in _UNSUPPORTED.items():
        parser.add_argument("--" + name.replace("_", "-"), action="store_true", help=f"not supported: {why}")
    return parser


def parse_config(argv: Optional[list[str]] = None) -> PreprocessConfig:
    """Parse the command line into a validated `PreprocessConfig` (exits 2 on a usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, why in _UNSUPPORTED.items():
        if getattr(args, name):
            parser.error(f"--{name.replace('_', '-')}: {why}")
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PreprocessConfig)}
    config = PreprocessConfig(**values)
    try:
        config.validate()
    except ValueError as error:
        parser.error(str(error))
    return config
