#!/usr/bin/env python3
"""Build the IXT demo corpus from offline sources (stdlib code, HumanEval with broken
variants, GSM8K-style math with wrong answers, Python documentation prose).

    python tools/build_demo_corpus.py --output data/demo.jsonl --max-docs 3000 --seed 0

The logic lives in megatron_ixt.feedback.corpus; see docs/feedback.md.
"""

import sys

from megatron_ixt.feedback.corpus.builder import main

if __name__ == "__main__":
    sys.exit(main())
