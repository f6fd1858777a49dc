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
import torch  # noqa: E402

from megatron_ixt.evaluation.generation import chat_context, control_prefix  # noqa: E402
from megatron_ixt.feedback.math_critic import MathCritic  # noqa: E402


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a share k/n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def greedy(model, tokenizer, contexts: list[list[int]], max_new_tokens: int, batch: int = 32) -> list[list[int]]:
    """Greedy continuations of ``contexts`` until the eod, as ``generation.continue_ids`` with
    ``greedy=True`` makes them one at a time, but for up to ``batch`` contexts of equal length
    per forward pass (the questions tokenize to a few lengths only): without a KV cache, one
    context at a time would take most of an hour on two cores."""
    blocked = [tokenizer.feedback_open_id, tokenizer.feedback_close_id]
    outputs: list[list[int]] = [[] for _ in contexts]
    by_length: dict[int, list[int]] = {}
    for i, context in enumerate(contexts):
        by_length.setdefault(len(context), []).append(i)
    for indices in by_length.values():
        for start in range(0, len(indices), batch):
            rows = indices[start:start + batch]
            tokens = torch.tensor([contexts[i] for i in rows])
            done = [False] * len(rows)
            for _ in range(max_new_tokens):
                logits = model.logits(tokens)[:, -1].float().cpu()
                logits[:, tokenizer.vocab_size:] = float("-inf")  # the vocabulary's TP padding
                logits[:, blocked] = float("-inf")
                chosen = logits.argmax(-1)
                for j, token in enumerate(chosen.tolist()):
                    if not done[j]:
                        done[j] = token == tokenizer.eod
                        if not done[j]:
                            outputs[rows[j]].append(token)
                if all(done):
                    break
                tokens = torch.cat([tokens, chosen[:, None]], dim=1)
    return outputs


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
    critic = MathCritic()
    prompts = [json.loads(line) for line in args.prompts.read_text().splitlines() if line.strip()]
    levels = {"best": args.best_level, "worst": args.worst_level}
    results = {"checkpoint": str(args.load), "template": template, "prompts": len(prompts), "conditions": {}}
    for condition in conditions:
        feedback = [] if condition == "none" else control_prefix(tokenizer, template, levels[condition])
        accepted, answers, started = 0, [], time.time()
        contexts = [chat_context(tokenizer, prompt["question"], feedback) for prompt in prompts]
        generated = greedy(model, tokenizer, contexts, args.max_new_tokens)
        print(f"  {condition}: {len(prompts)} answers in {time.time() - started:.0f} s", flush=True)
        for i, (prompt, ids) in enumerate(zip(prompts, generated)):
            text = tokenizer.detokenize(ids)
            verdict = critic.critique({"text": text, "reference_answer": prompt["reference_answer"], "domain": "math"})
            ok = verdict.axes.get("factual_accuracy") == 10.0
            accepted += ok
            answers.append({"question": prompt["question"], "answer": text, "accepted": ok})
        low, high = wilson(accepted, len(prompts))
        results["conditions"][condition] = {"accepted": accepted, "n": len(prompts), "share": accepted / len(prompts),
                                            "wilson95": [low, high], "answers": answers}
        print(f"{condition}: accepted {accepted}/{len(prompts)} = {accepted / len(prompts):.2f} "
              f"[{low:.2f}, {high:.2f}]", flush=True)
    args.output.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
