#!/usr/bin/env python3
"""Annotate JSONL documents with critique feedback (IXT).

    python tools/annotate_feedback.py --input corpus.jsonl --output annotated.jsonl --critic auto
    python tools/annotate_feedback.py --input corpus.jsonl --output annotated.jsonl \\
        --critic llm --endpoint http://localhost:8000/v1 --model Qwen/Qwen3-8B --fraction 0.15

Resumable: after a crash or Ctrl-C, rerun the same command. All logic lives in
megatron_ixt.feedback (cli.py, annotate.py); see docs/feedback.md.
"""

import sys

from megatron_ixt.feedback.cli import main

if __name__ == "__main__":
    sys.exit(main())
