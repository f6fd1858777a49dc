"""IXT against plain next-token training: same data, same token budget, same seed.

    python examples/ixt_vs_baseline/run.py --output-dir outputs/ixt_vs_baseline      # ~12 min, 2 cores
    python examples/ixt_vs_baseline/run.py --annotated outputs/demo/data/annotated.jsonl  # reuse the demo's corpus

Stages (each the project's real tool, logs in ``<output-dir>/logs``):

1. corpus + critiques (as in the demo), or ``--annotated`` to reuse an annotated JSONL;
2. the demo's held-out split (whole document groups, by hash), one tokenizer for all runs;
3. preprocessing: ``--prefix-template quality`` (IXT, and the control below) and ``none``
   (the baseline: byte-identical to Megatron-LM's output);
4. three trainings with identical flags and seed, run side by side (one process each),
   saving a checkpoint every ``--save-interval`` steps: IXT, the baseline, and a control
   whose prefix is the same on every document (``Quality: 3/5``: a prefix without
   information);
5. ``measure.py``: held-out loss on high-quality documents (critics' level 4-5, text tokens
   only) of every checkpoint, and the critics' acceptance of sampled continuations;
6. ``results.md`` / ``results.json`` / ``loss_vs_tokens.png``: the table, and the
   compute-efficiency ratio (tokens the baseline needs to reach IXT's final held-out loss,
   divided by IXT's tokens).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demo"))

from pipeline import (CORPUS_DEGRADED_SHARE, CORPUS_MIX, REPO, StageError, Stages,  # noqa: E402
                      prepare_output_dir, python_cmd, read_jsonl, run_concurrently, split_held_out, write_jsonl)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import write_results  # noqa: E402

# name -> (training documents, prefix template). The control trains with a prefix that
# says nothing: "Quality: 3/5" on every document. It separates what the feedback tells the
# model from what merely having a prefix at every document start does.
RUNS = {"ixt": ("train.jsonl", "quality"), "baseline": ("train.jsonl", "none"),
        "control": ("train_control.jsonl", "quality")}
CONSTANT_FEEDBACK = {"score": 5.0, "scale": [0, 10]}  # level 3 for every document
OUTPUT_ENTRIES = ("data", "checkpoints", "cache", "logs", "measurements.json", "results.md", "results.json",
                  "loss_vs_tokens.png", "stages.json", *(f"metrics_{n}.jsonl" for n in RUNS),
                  *(f"measurements_{n}.json" for n in RUNS))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs" / "ixt_vs_baseline")
    parser.add_argument("--annotated", type=Path, help="reuse this annotated JSONL (skip corpus and critiques)")
    parser.add_argument("--max-docs", type=int, default=3000)
    parser.add_argument("--train-iters", type=int, default=400)
    parser.add_argument("--save-interval", type=int, default=80, help="a checkpoint (a point on the curve) every N")
    parser.add_argument("--held-out-share", type=float, default=0.08)
    parser.add_argument("--prompts-per-kind", type=int, default=24, help="task-metric prompts per kind (prose, code)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny budget, to check the script runs (~2 min)")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_docs, args.train_iters, args.save_interval, args.prompts_per_kind = 200, 10, 5, 3
    return args


def high_quality(doc: dict) -> bool:
    from megatron_ixt.data.levels import quality_level

    fb = doc.get("feedback")
    return bool(fb) and quality_level(fb["score"], fb.get("scale", (0, 10))) >= 4


def task_prompts(docs: list[dict], per_kind: int) -> list[dict]:
    """Prompts from held-out high-quality documents: for prose, the first words of the
    text; for code, a top-level ``def``/``class`` line (so that a continuation can be a
    whole, compilable definition)."""
    prose, code = [], []
    for doc in docs:
        text = doc["text"]
        if doc.get("domain") == "prose" and len(prose) < per_kind:
            words = text.split()
            if len(words) >= 30:
                prose.append({"kind": "prose", "prompt": " ".join(words[:8]) + " "})
        elif doc.get("domain") == "code" and len(code) < per_kind:
            match = re.search(r"^(?:def|class) [^\n]*:\n", text, flags=re.M)
            if match:
                code.append({"kind": "code", "prompt": match.group(0)})
    return prose + code


def train_cmd(name: str, data: Path, out: Path, args) -> list[str]:
    """Identical flags for every run; only the data prefix differs. One process each (the
    runs share the two cores side by side); the demo's model and schedule."""
    return python_cmd(
        "pretrain_ixt.py", "--config", REPO / "examples" / "demo" / "demo.yaml",
        "--data-path", data / f"{name}_text_document", "--tokenizer-type", "SentencePieceTokenizer",
        "--tokenizer-model", data / "sp.model", "--train-iters", args.train_iters,
        "--eval-interval", args.train_iters, "--save-interval", args.save_interval,
        "--seed", 1234, "--ixt-repeat-prefix", "--ixt-feedback-dropout", 0.1,
        "--save", out / "checkpoints" / name, "--log-file", out / f"metrics_{name}.jsonl",
        "--data-cache-path", out / "cache" / name)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.output_dir.resolve()
    data = out / "data"
    if args.annotated is not None and out in args.annotated.resolve().parents:
        print(f"run.py: error: --annotated {args.annotated} lies inside --output-dir {out}, which a run clears",
              file=sys.stderr)
        return 2
    try:
        prepare_output_dir(out, OUTPUT_ENTRIES)
    except StageError as error:
        print(f"run.py: error: {error}", file=sys.stderr)
        return 2
    data.mkdir(parents=True)
    stages = Stages(out, total=len(RUNS) + (7 if args.annotated is None else 5))
    started = time.monotonic()
    try:
        annotated = args.annotated
        if annotated is None:
            stages.run("corpus", python_cmd("tools/build_demo_corpus.py", "--output", data / "corpus.jsonl",
                                            "--max-docs", args.max_docs, "--seed", args.seed, "--mix", CORPUS_MIX,
                                            "--degraded-share", CORPUS_DEGRADED_SHARE),
                       "building the corpus")
            stages.run("annotate", python_cmd("tools/annotate_feedback.py", "--input", data / "corpus.jsonl",
                                              "--output", data / "annotated.jsonl", "--critic", "auto",
                                              "--no-progress", "--workers", 1),  # see docs/demo.md (gh-106905)
                       "critiquing it with the offline critics")
            annotated = data / "annotated.jsonl"

        def split() -> str:
            counts = split_held_out(annotated, data / "train.jsonl", data / "heldout.jsonl", args.held_out_share,
                                    args.seed)
            held = read_jsonl(data / "heldout.jsonl")
            hq = [d for d in held if high_quality(d)]
            write_jsonl(data / "heldout_hq.jsonl", hq)
            write_jsonl(data / "prompts.jsonl", task_prompts(hq, args.prompts_per_kind))
            write_jsonl(data / "train_control.jsonl", [{**d, "feedback": CONSTANT_FEEDBACK}
                                                       for d in read_jsonl(data / "train.jsonl")])
            return f"{counts['train']} train, {counts['held_out']} held out, {len(hq)} of them level 4-5"

        stages.step("split", split, "held-out split (the demo's), high-quality subset, task prompts")
        stages.run("tokenizer", python_cmd("tools/train_tokenizer.py", "--input", data / "train.jsonl",
                                           "--model-prefix", data / "sp", "--vocab-size",
                                           1000 if args.quick else 4000, "--model-type", "bpe"),
                   "one tokenizer for all runs")
        for name, (documents, template) in RUNS.items():
            stages.run(f"prep_{name}", python_cmd(
                "tools/preprocess_data.py", "--input", data / documents, "--output-prefix", data / name,
                "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", data / "sp.model",
                "--append-eod", "--workers", 2, "--prefix-template", template),
                f"preprocessing {documents} with --prefix-template {template}")

        def progress() -> str:
            done = {}
            for name in RUNS:
                path = out / f"metrics_{name}.jsonl"
                rows = path.read_text().splitlines() if path.exists() else []
                done[name] = json.loads(rows[-1])["iteration"] if rows else 0
            return ", ".join(f"{n} {i}/{args.train_iters}" for n, i in done.items())

        def train() -> str:
            run_concurrently({f"train_{n}": train_cmd(n, data, out, args) for n in RUNS}, stages.logs, progress)
            return progress()

        stages.step("train", train, f"{', '.join(RUNS)}: {args.train_iters} steps each, side by side")

        def measure() -> str:
            run_concurrently({f"measure_{name}": [
                sys.executable, str(Path(__file__).with_name("measure.py")),
                "--run", f"{name}={out / 'checkpoints' / name}", "--heldout", data / "heldout_hq.jsonl",
                "--prompts", data / "prompts.jsonl", "--template", "quality", "--seed", args.seed,
                "--gen-tokens", 16 if args.quick else 64, "--output", out / f"measurements_{name}.json"]
                for name in RUNS}, stages.logs)
            parts = [json.loads((out / f"measurements_{name}.json").read_text()) for name in RUNS]
            merged = {**parts[0], "curves": {}, "task": {}}
            for part in parts:
                merged["curves"].update(part["curves"])
                merged["task"].update(part["task"])
            (out / "measurements.json").write_text(json.dumps(merged, indent=1) + "\n")
            return ", ".join(f"{n}: final {c[-1].get('none', float('nan')):.4f} (no prefix)"
                             for n, c in merged["curves"].items())

        stages.step("measure", measure, "held-out loss of every checkpoint, critics' verdicts on samples "
                                        "(one process per run, side by side)")
        stages.save_timings(out / "stages.json")
        stages.step("results", lambda: write_results(out), "results.md, results.json, loss_vs_tokens.png")
    except StageError as error:
        print(f"\nixt_vs_baseline failed: {error}", file=sys.stderr)
        return 1
    stages.save_timings(out / "stages.json")
    print(f"done in {time.monotonic() - started:.0f} s: {out / 'results.md'}")
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
