#!/usr/bin/env python3
"""Build the IXT demo corpus from offline sources (stdlib code, HumanEval with broken
variants, GSM8K-style math with wrong answers, Python documentation prose).

    python examples/demo/build_corpus.py --output data/demo.jsonl --max-docs 3000 --seed 0

The logic lives in examples/demo/corpus/ (demo code, not part of the megatron_ixt
package); see docs/feedback.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus.builder import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
