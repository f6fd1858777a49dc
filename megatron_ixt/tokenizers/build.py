"""Tokenizers with Megatron-LM's type names, plus the two feedback delimiter ids.

`tokenizer_from_config(TokenizerConfig)` (the spec every entry point carries, `config.schema`)
or, by name, `build_tokenizer(tokenizer_type, tokenizer_model=None, vocab_file=None,
merge_file=None, vocab_size=None)` returns one of:

| type                     | files                                  | eod                       |
|--------------------------|----------------------------------------|---------------------------|
| `SentencePieceTokenizer` | `tokenizer_model` (`.model`)           | the model's `eos_id()`    |
| `HuggingFaceTokenizer`   | `tokenizer_model` (`tokenizer.json` or its folder) | its end-of-text token |
| `GPT2BPETokenizer`       | `vocab_file` (encoder.json) + `merge_file` (vocab.bpe) | `<|endoftext|>` |
| `TikTokenizer`           | `tokenizer_model` (Megatron-LM's tiktoken `.json`), `tiktoken_pattern` | `</s>` |
| `NullTokenizer`          | none; `vocab_size`                     | `vocab_size`              |

Each subclasses megatron-core's legacy tokenizer interface (`MegatronLegacyTokenizer`, the
one megatron-core 0.16's `GPTDataset` expects; reproduced in `tokenizers.base` so that
preprocessing never imports megatron-core) and adds `feedback_open_id` / `feedback_close_id` and a batched
`tokenize_batch` used by preprocessing.

The families live in their own modules: `ixt` (the common part: delimiter ids, batched
tokenization, identity; and `NullTokenizer`), `sentencepiece_model`, `bpe` (tokenizer.json and
GPT-2 BPE, both through the `tokenizers` library), `tiktoken_model` (Megatron-LM's tiktoken
vocabularies; the optional `tiktoken` package, imported only for this type).
"""

from __future__ import annotations

import os
from typing import Optional

from megatron_ixt.config.schema import TOKENIZER_TYPES, TokenizerConfig
from megatron_ixt.format.errors import TokenizerError
from megatron_ixt.tokenizers.bpe import GPT2BPETokenizer, HuggingFaceTokenizer
from megatron_ixt.tokenizers.ixt import IXTTokenizer, NullTokenizer
from megatron_ixt.tokenizers.sentencepiece_model import SentencePieceTokenizer
from megatron_ixt.tokenizers.tiktoken_model import TikTokenizer


def build_tokenizer(
    tokenizer_type: str,
    tokenizer_model: Optional[str] = None,
    vocab_file: Optional[str] = None,
    merge_file: Optional[str] = None,
    vocab_size: Optional[int] = None,
    *,
    tiktoken_pattern: Optional[str] = None,
    tiktoken_num_special_tokens: int = 1000,
    tiktoken_special_tokens: Optional[list] = None,
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
    elif tokenizer_type == "TikTokenizer":
        if tiktoken_pattern is None:
            raise TokenizerError("TikTokenizer needs --tiktoken-pattern (v1 or v2)")
        # --vocab-size cuts the vocabulary, as in Megatron-LM (tokenizers/tiktoken_model.py).
        tokenizer = TikTokenizer(need(tokenizer_model, "--tokenizer-model"), tiktoken_pattern,
                                 tiktoken_num_special_tokens, tiktoken_special_tokens, vocab_size)
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
                           config.vocab_size, tiktoken_pattern=config.tiktoken_pattern,
                           tiktoken_num_special_tokens=config.tiktoken_num_special_tokens,
                           tiktoken_special_tokens=config.tiktoken_special_tokens,
                           require_delimiters=require_delimiters)
