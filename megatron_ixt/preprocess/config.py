"""Configuration of `tools/preprocess_data.py`: a typed dataclass and its command line.

The flags are Megatron-LM's (`--input`, `--output-prefix`, `--json-keys`, `--tokenizer-type`,
`--tokenizer-model`, `--vocab-file`, `--merge-file`, `--append-eod`, `--workers`,
`--partitions`, `--log-interval`) plus IXT's (`--feedback-key`, `--prefix-template`,
`--score-scale`, `--quality-thresholds`, `--skip-invalid`). The flag names are derived from
the field names by the project's one typed generator (`megatron_ixt.config.flags`); each
field's `arg(default, help)` is its help text. The tokenizer flags are training's own
(`TokenizerConfig`, less the vocabulary padding, which is the model's business), so a
dataset and the run that trains on it name their tokenizer with the same fields.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Optional

from megatron_ixt.config.flags import add_dataclass_arguments, dataclass_values
from megatron_ixt.config.schema import TOKENIZER_TYPES, TokenizerConfig, arg, required
from megatron_ixt.format.levels import QualityThresholds
from megatron_ixt.format.prefixes import DEFAULT_PREFIX_TEMPLATE

TOKENIZER_FLAGS = ("tokenizer_type", "tokenizer_model", "vocab_file", "merge_file", "vocab_size",
                   "tiktoken_pattern", "tiktoken_num_special_tokens", "tiktoken_special_tokens")
"""The `TokenizerConfig` fields preprocessing takes (`--tokenizer-type` required)."""


@dataclass
class PreprocessConfig:
    input: str = required("Input JSONL: a file, a glob (quote it) or a comma-separated list; "
                          "`.gz` and `.zst` are decompressed.")
    output_prefix: str = required("Output path prefix: writes <prefix>_<key>_document.{bin,idx,ixt.npy,meta.json}.")
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    json_keys: list = arg(["text"], "Keys holding the text; each gets its own complete dataset.")
    append_eod: bool = arg(False, "Append the tokenizer's end-of-document token to every non-empty document.")
    prepend_bos: bool = arg(False, "Put the tokenizer's beginning-of-sequence token before every non-empty "
                                   "document's text (after its feedback prefix, if any): the constant document "
                                   "start of a fair baseline for IXT.")
    workers: int = arg(1, "Worker processes; each tokenizes and writes its own shards, the main process only merges.")
    partitions: int = arg(1, "Accepted for Megatron-LM compatibility. Output is always in input order and does "
                             "not depend on it: the work is always sharded per batch.")
    log_interval: int = arg(1000, "Log a progress line every this many documents.")
    feedback_key: str = arg("feedback", "Key of the feedback object in each line.")
    prefix_template: str = arg(DEFAULT_PREFIX_TEMPLATE, "critique, quality, none, or the path of a template YAML file.")
    score_scale: str = arg("0,10", "MIN,MAX of feedback scores that do not declare their own 'scale'.")
    quality_thresholds: str = arg("fixed", "fixed (fifths of the scale), quantile (corpus quintiles, computed "
                                           "in a first pass), or four increasing cut points on the normalized "
                                           "score, such as 0.3,0.5,0.7,0.9 (levels kept from another corpus).")
    skip_invalid: bool = arg(False, "Skip bad lines (counted and listed in the .meta.json) instead of stopping "
                                    "at the first.")
    batch_size: int = arg(1024, "Lines per work unit (shard). Larger batches amortize overhead; smaller ones "
                                "balance better.")
    sft: bool = arg(False, "Supervised fine-tuning data: lines are conversations (Megatron-LM's 'messages' list, "
                           "plus an optional feedback object), rendered by the tokenizer's chat template (or the "
                           "default one) with the feedback in the system message; a roles file beside the dataset "
                           "marks the assistant tokens that train. The output is <prefix>_messages_document.")
    seq_length: Optional[int] = arg(None, "SFT: the training --seq-length; a longer conversation is handled by "
                                          "--overlong (default: no limit).")
    overlong: str = arg("truncate", "SFT: a conversation longer than --seq-length + 1 tokens: truncate (keep its "
                                    "leading turns that fit, ending with an assistant turn; left out when even "
                                    "the first assistant turn does not fit), drop (left out), or refuse (file and "
                                    "line, exit 1). Each case is counted.", choices=("truncate", "drop", "refuse"))
    keep_sequential_samples: bool = arg(False, "Accepted for Megatron-LM compatibility; output order always "
                                               "follows the input.")

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
        if self.tokenizer.tokenizer_type not in TOKENIZER_TYPES:
            raise ValueError(f"--tokenizer-type: expected one of {', '.join(TOKENIZER_TYPES)}, "
                             f"got {self.tokenizer.tokenizer_type!r}")
        if self.quality_thresholds != "quantile":
            try:
                QualityThresholds.parse(self.quality_thresholds)
            except ValueError as error:
                raise ValueError(f"--quality-thresholds: {error}") from None
        for name in ("workers", "partitions", "log_interval", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(self, name)}")
        if len(set(self.json_keys)) != len(self.json_keys):
            raise ValueError(f"--json-keys: keys must be distinct, got {self.json_keys}")
        if self.sft:
            if self.json_keys == ["text"]:
                self.json_keys = ["messages"]  # the flag's default: Megatron-LM's SFT key
            if self.json_keys != ["messages"]:
                raise ValueError(f"--json-keys: --sft reads the 'messages' list of each line, got {self.json_keys}")
            if self.tokenizer.tokenizer_type == "NullTokenizer":
                raise ValueError("--sft: the NullTokenizer has no text to render conversations with")
            if self.seq_length is not None and self.seq_length < 1:
                raise ValueError(f"--seq-length: expected a positive integer, got {self.seq_length}")
            if self.append_eod or self.prepend_bos:
                raise ValueError("--sft ends every conversation with the tokenizer's eod itself: drop "
                                 "--append-eod / --prepend-bos")
        elif self.seq_length is not None:
            raise ValueError("--seq-length is an --sft option (pretraining documents are packed at training time)")
        if self.feedback_key in self.json_keys:
            raise ValueError(f"--feedback-key {self.feedback_key!r} is also one of --json-keys")


_UNSUPPORTED = {
    "split_sentences": "sentence splitting (NLTK) is not supported; documents are one sequence each",
    "keep_newlines": "only meaningful with --split-sentences, which is not supported",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/preprocess_data.py",
        description="Tokenize IXT JSONL documents ([feedback prefix] + text) into megatron-core indexed datasets.",
    )
    add_dataclass_arguments(parser, PreprocessConfig)
    add_dataclass_arguments(parser.add_argument_group("tokenizer"), TokenizerConfig, fields=TOKENIZER_FLAGS,
                            required=("tokenizer_type",))
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
    config = dataclass_values(args, PreprocessConfig, tokenizer=dataclass_values(args, TokenizerConfig))
    try:
        config.validate()
    except ValueError as error:
        parser.error(str(error))
    return config
