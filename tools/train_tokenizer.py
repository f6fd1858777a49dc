#!/usr/bin/env python
"""Train a SentencePiece tokenizer on JSONL text, lossless for code, with the feedback
delimiters <|feedback|> and <|/feedback|> built in as single pieces. Example:

    python tools/train_tokenizer.py --input 'data/*.jsonl' --model-prefix tok/code32k \
        --vocab-size 32000 --model-type unigram

The logic lives in megatron_ixt.tokenizers.training.
"""
import sys

from megatron_ixt.tokenizers.training import main

if __name__ == "__main__":
    sys.exit(main())
