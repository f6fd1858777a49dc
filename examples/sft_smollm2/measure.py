"""Greedy answers of an SFT checkpoint to held-out arithmetic questions, judged by the math
verifier, under chosen feedback (``--chat`` as tools/generate.py renders it).

    .venv/bin/python examples/sft_smollm2/measure.py --load CKPT --prompts heldout.jsonl \
        --conditions best,worst,none --output results.json

``best`` / ``worst`` are the quality levels (``--best-level``, ``--worst-level``) rendered by
the checkpoint's prefix template into the system message; ``none`` is no feedback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from megatron_ixt.runtime.logs import setup_logging  # noqa: E402

setup_logging()

from megatron_ixt.evaluation.engine import load_for_inference, prefix_template_for  # noqa: E402
from megatron_ixt.evaluation.generation import SamplingConfig, chat_context, continue_ids, control_prefix  # noqa: E402
from megatron_ixt.feedback.math_critic import MathCritic  # noqa: E402


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a share k/n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", required=True)
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--conditions", default="best,worst,none")
    parser.add_argument("--best-level", type=int, default=5)
    parser.add_argument("--worst-level", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    inference = argparse.Namespace(load=args.load, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                                   tokenizer_type=None, tokenizer_model=None, vocab_file=None, merge_file=None,
                                   prefix_template=None)
    cfg, model, tokenizer = load_for_inference(inference)
    conditions = args.conditions.split(",")
    # Only feedback needs the checkpoint's template (the import records none).
    template = prefix_template_for(model, None) if set(conditions) - {"none"} else None
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, greedy=True)
    critic = MathCritic()
    prompts = [json.loads(line) for line in args.prompts.read_text().splitlines() if line.strip()]
    levels = {"best": args.best_level, "worst": args.worst_level}
    results = {"checkpoint": str(args.load), "template": template, "prompts": len(prompts), "conditions": {}}
    for condition in conditions:
        feedback = [] if condition == "none" else control_prefix(tokenizer, template, levels[condition])
        accepted, answers, started = 0, [], time.time()
        for i, prompt in enumerate(prompts):
            ids = continue_ids(model, tokenizer, chat_context(tokenizer, prompt["question"], feedback), sampling)
            text = tokenizer.detokenize(ids)
            verdict = critic.critique({"text": text, "reference_answer": prompt["reference_answer"], "domain": "math"})
            ok = verdict.axes.get("factual_accuracy") == 10.0
            accepted += ok
            answers.append({"question": prompt["question"], "answer": text, "accepted": ok})
            if (i + 1) % 20 == 0:
                print(f"  {condition}: {i + 1}/{len(prompts)} prompts, {accepted} accepted, "
                      f"{(time.time() - started) / (i + 1):.2f} s/prompt", flush=True)
        low, high = wilson(accepted, len(prompts))
        results["conditions"][condition] = {"accepted": accepted, "n": len(prompts), "share": accepted / len(prompts),
                                            "wilson95": [low, high], "answers": answers}
        print(f"{condition}: accepted {accepted}/{len(prompts)} = {accepted / len(prompts):.2f} "
              f"[{low:.2f}, {high:.2f}]", flush=True)
    args.output.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
