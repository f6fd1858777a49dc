"""Judge answers that ``tools/generate.py --chat --prompts-file`` wrote: the math verifier
checks each answer's final number and step against the question's reference answer.

    .venv/bin/python examples/sft_smollm2/measure.py answers.jsonl [more.jsonl ...]

An answer is accepted when the verifier finds the right final answer and a right step
(``factual_accuracy`` 10). Prints, per file, the accepted share with its Wilson 95% interval.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from megatron_ixt.evaluation.stats import wilson  # noqa: E402
from megatron_ixt.feedback.math_critic import MathCritic  # noqa: E402


def judge(path: Path) -> dict:
    """The verdicts on one generate.py output file (its lines carry ``reference_answer``)."""
    critic = MathCritic()
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    answers = []
    for row in rows:
        verdict = critic.critique({"text": row["output"], "reference_answer": row["reference_answer"],
                                   "domain": "math"})
        answers.append({"question": row["prompt"], "answer": row["output"],
                        "accepted": verdict.axes.get("factual_accuracy") == 10.0})
    accepted = sum(a["accepted"] for a in answers)
    low, high = wilson(accepted, len(answers))
    return {"accepted": accepted, "n": len(answers), "share": accepted / len(answers), "wilson95": [low, high],
            "answers": answers}


def main() -> int:
    for path in sys.argv[1:]:
        r = judge(Path(path))
        print(f"{path}: accepted {r['accepted']}/{r['n']} = {r['share']:.3f} "
              f"[{r['wilson95'][0]:.3f}, {r['wilson95'][1]:.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
