#!/usr/bin/env python
"""Tokenize IXT JSONL documents into megatron-core indexed datasets.

Megatron-LM's flags plus IXT's feedback prefixes; see docs/data.md. Example:

    python tools/preprocess_data.py --input 'data/*.jsonl.zst' --output-prefix out/corpus \
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model \
        --append-eod --workers 8 --prefix-template critique

writes out/corpus_text_document.{bin,idx} (megatron-core format), .ixt.npy (prefix length
and quality level per sequence) and .meta.json. The logic lives in
megatron_ixt.preprocess.pipeline.
"""
import sys
import warnings

# megatron-core warns on import that Transformer Engine and Apex are missing; preprocessing
# needs neither, so the warning would only be noise here.
warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

from megatron_ixt.preprocess.config import parse_config  # noqa: E402

if __name__ == "__main__":
    # The command line first (light imports): --help and usage errors return at once.
    config = parse_config()
    from megatron_ixt.preprocess.pipeline import main

    sys.exit(main(config=config))
