"""The online stage on a real model, on CPU: SmolLM2-135M-Instruct after its SFT without
feedback (examples/sft_smollm2) answers arithmetic questions; the math verifier judges every
answer; three arms train on them for R rounds (tools/online_ixt.py --mode ixt|filter|plain),
and every round's model answers held-out questions.

    .venv/bin/python examples/online_smollm2/run.py --output-dir outputs/online_smollm2

Stages (logs in OUTPUT/logs/; each is skipped when its output exists, so a rerun resumes):
1. the start model: examples/sft_smollm2/run.py --only-plain (its import, data, and the SFT
   without feedback), unless --start names a checkpoint;
2. the prompts: --prompts new questions of the SFT example's kind (two-digit addition and
   subtraction, one-digit times two-digit products) with their computed answers, none of them
   among the SFT training questions or the held-out ones; the held-out questions are the SFT
   example's (--heldout of them);
3. per round, per arm: tools/online_ixt.py --rounds r (the driver keeps the finished rounds
   and runs round r), then tools/generate.py --chat --greedy on the held-out questions: IXT
   under the best feedback (5/5), the worst its rounds earned and none; filter and plain
   without feedback; judged by the math verifier (accepted: level 4-5, the right final answer);
4. results.md / results.json: accepted shares with Wilson 95% intervals, and each round's
   summary (accepted share of the samples, training records, losses, wall times).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "examples" / "demo"), str(REPO / "examples" / "sft_smollm2")]

from pipeline import run_stage as run  # noqa: E402
from megatron_ixt.evaluation.stats import wilson  # noqa: E402
from megatron_ixt.feedback.math_critic import MathCritic  # noqa: E402
from megatron_ixt.online.tasks import is_accepted  # noqa: E402

ARMS = ("ixt", "filter", "plain")


def new_questions(n: int, exclude: set, seed: int) -> list[dict]:
    from run import question  # examples/sft_smollm2/run.py: the SFT data's kind of question

    rng, out = random.Random(seed), []
    while len(out) < n:
        expression, value = question(rng)
        if expression in exclude:
            continue
        exclude.add(expression)
        out.append({"id": f"p{len(out)}", "domain": "math", "prompt": f"What is {expression}?",
                    "reference_answer": value})
    return out


def judge(answers: Path) -> dict:
    """Accepted answers (the math verifier's level 4-5) of a generate.py output file."""
    critic = MathCritic()
    rows = [json.loads(line) for line in answers.read_text().splitlines() if line.strip()]
    accepted = 0
    for row in rows:
        verdict = critic.critique({"text": row["output"], "reference_answer": row["reference_answer"],
                                   "domain": "math"})
        accepted += is_accepted({"feedback": verdict.to_record()})
    low, high = wilson(accepted, len(rows))
    return {"accepted": accepted, "n": len(rows), "share": accepted / len(rows), "wilson95": [low, high]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs" / "online_smollm2")
    parser.add_argument("--sft-dir", type=Path, default=REPO / "outputs" / "sft_smollm2",
                        help="examples/sft_smollm2's output folder (its data and its SFT without feedback)")
    parser.add_argument("--start", type=Path, help="start checkpoint (default: SFT_DIR/checkpoints/plain)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=96, help="training prompts")
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--train-iters", type=int, default=12, help="steps of 8 conversations per round")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--heldout", type=int, default=500)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    args = parser.parse_args()
    out, python = args.output_dir.resolve(), sys.executable
    logs, measured = out / "logs", out / "measurements"
    for folder in (logs, measured):
        folder.mkdir(parents=True, exist_ok=True)

    start = args.start or args.sft_dir / "checkpoints" / "plain"
    if not (start / "latest_checkpointed_iteration.txt").exists():
        run("sft_without_feedback", [python, "examples/sft_smollm2/run.py", "--output-dir", args.sft_dir,
                                     "--train-iters", 40, "--only-plain"], logs)

    # The held-out questions are the SFT example's; the training prompts are new ones.
    sft_data = args.sft_dir / "data"
    heldout, prompts = out / "heldout.jsonl", out / "prompts.jsonl"
    if not prompts.exists():
        held = [json.loads(line) for line in (sft_data / "heldout.jsonl").read_text().splitlines()][:args.heldout]
        seen = {json.loads(line)["question"][len("What is "):-1]
                for line in (sft_data / "train.jsonl").read_text().splitlines()}
        seen |= {row["prompt"][len("What is "):-1] for row in held}
        heldout.write_text("".join(json.dumps(row) + "\n" for row in held))
        prompts.write_text("".join(json.dumps(p) + "\n" for p in new_questions(args.prompts, seen, seed=2)))

    def measure(name: str, ckpt: Path, condition: list) -> dict:
        answers = measured / f"{name}.jsonl"
        if not answers.exists():
            run(f"generate_{name}", [python, "tools/generate.py", "--load", ckpt, "--chat", *condition, "--greedy",
                                     "--max-new-tokens", 20, "--prompts-file", heldout, "--batch-size", 64,
                                     "--output", answers], logs)
        return judge(answers)

    rows = [("start", 0, "none", measure("start_none", start, ["--no-feedback"]))]
    summaries: dict = {arm: [] for arm in args.arms}
    for r in range(1, args.rounds + 1):
        for arm in args.arms:
            folder = out / arm
            if not (folder / f"round_{r}" / "summary.json").exists():
                run(f"{arm}_round_{r}", [
                    python, "tools/online_ixt.py", "--load", start, "--chat", "--prompts", prompts,
                    "--output-dir", folder, "--rounds", r, "--samples-per-prompt", args.samples_per_prompt,
                    "--mode", arm, "--critic", "math", "--temperature", args.temperature, "--max-new-tokens", 20,
                    "--sample-seed", 0, "--train-iters", args.train_iters, "--micro-batch-size", 8,
                    "--global-batch-size", 8, "--lr", args.lr, "--min-lr", args.lr / 10, "--lr-warmup-iters", 2,
                    "--seq-length", args.seq_length, "--log-interval", 4, "--num-workers", 0,
                    "--ixt-feedback-dropout", 0.1 if arm == "ixt" else 0.0], logs)
            summary = json.loads((folder / f"round_{r}" / "summary.json").read_text())
            summaries[arm].append(summary)
            ckpt = Path(summary["checkpoint"])
            if arm == "ixt":
                seen_levels = [int(k) for k, n in summaries[arm][0]["levels"].items() if n]
                worst = min(seen_levels)
                for condition, flags in (("best", ["--feedback-level", 5]), (f"worst ({worst}/5)", ["--feedback-level", worst]),
                                         ("none", ["--no-feedback"])):
                    rows.append((arm, r, condition, measure(f"{arm}_r{r}_{condition.split()[0]}", ckpt, flags)))
            else:
                rows.append((arm, r, "none", measure(f"{arm}_r{r}_none", ckpt, ["--no-feedback"])))
            write_results(out, rows, summaries)
    print((out / "results.md").read_text())
    return 0


def write_results(out: Path, rows: list, summaries: dict) -> None:
    table = ["| arm | round | feedback at inference | accepted | share | Wilson 95% |", "|---|---|---|---|---|---|"]
    table += [f"| {arm} | {r} | {c} | {m['accepted']}/{m['n']} | {m['share']:.3f} | "
              f"[{m['wilson95'][0]:.3f}, {m['wilson95'][1]:.3f}] |" for arm, r, c, m in rows]
    table += ["", "| arm | round | samples accepted (share) | levels 1-5 | trained on | lm loss first -> last | "
                  "wall s (sample / annotate / dataset / train) |", "|---|---|---|---|---|---|---|"]
    for arm, rounds in summaries.items():
        for s in rounds:
            t, w = s["training"], s["wall_s"]
            loss = f"{t['lm_loss_first']:.3f} -> {t['lm_loss_last']:.3f}" if t["lm_loss_last"] is not None else "-"
            table.append(f"| {arm} | {s['round']} | {s['accepted']}/{s['samples']} ({s['accepted_share']:.3f}) | "
                         f"{' '.join(str(n) for n in s['levels'].values())} | {t['records']} records, "
                         f"{t['iterations']} steps | {loss} | {w['sample']:.0f} / {w['annotate']:.0f} / "
                         f"{w['dataset']:.0f} / {w['train']:.0f} |")
    (out / "results.md").write_text("\n".join(table) + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "rounds": summaries}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
