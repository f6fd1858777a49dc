"""The IXT demo, end to end on real data on a CPU: corpus -> critiques -> tokenizer ->
preprocessing -> IXT training at TP=2 -> conditioning measured at PP=2 -> generation under
the best and the worst feedback -> a Markdown report with plots.

    python examples/demo/run_demo.py --output-dir outputs/demo          # ~6-10 min on 2 cores
    python examples/demo/run_demo.py --output-dir /tmp/demo --quick     # ~1-2 min, a smoke test

Every stage runs the project's real tool as a subprocess (the commands are in
``<output-dir>/logs/<stage>.log``, first line), so this file is also a worked example of
the command lines. See docs/demo.md for what each stage does and how to read the report.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import (CORPUS_DEGRADED_SHARE, CORPUS_MIX, REPO, StageError, Stages,  # noqa: E402
                      prepare_output_dir, python_cmd, run_logged, split_held_out, torchrun_cmd)


@dataclass
class Settings:
    """The demo's budget. ``full`` is sized for ~8-10 minutes on two busy cores."""

    max_docs: int = 3000
    """Documents in the corpus (annotation runs at ~40-60 docs/s)."""
    mix: str = CORPUS_MIX
    """Shares of the corpus sources (build_demo_corpus.py --mix; stdlib code gets the rest)."""
    degraded_share: float = CORPUS_DEGRADED_SHARE
    """Share of prose pieces that also get a junk copy (keyword lists, repeated or cut lines)."""
    held_out_share: float = 0.08
    """Share of document groups kept out of training for the conditioning evaluation."""
    vocab_size: int = 4000
    train_iters: int = 400
    """Training steps of 16 x 256 tokens: 400 steps see ~1.6M tokens, about one epoch."""
    eval_interval: int = 50
    seq_length: int = 256
    eval_docs: int = 200
    """Held-out documents measured under the four conditions."""
    gen_tokens: int = 80
    template: str = "quality"
    """Prefix template: ``quality`` ("Quality: 4/5"). Not ``critique``: the offline critics'
    critiques run to 80 tokens (median) and 409 (max), too long for 256-token samples; see
    docs/demo.md."""
    feedback_dropout: float = 0.1
    """Share of annotated documents trained without their prefix (keeps an unconditional mode)."""


QUICK = Settings(max_docs=200, held_out_share=0.15, vocab_size=1000, train_iters=10, eval_interval=5,
                 seq_length=128, eval_docs=12, gen_tokens=12)

# One prompt per kind of text; each is sampled under the best and the worst feedback with
# the same seed, so the prefix is the only difference between the two continuations.
PROMPTS = {"prose": "The ", "code": "def "}
GEN_LEVELS = {"best": 5, "worst": 1}
OUTPUT_ENTRIES = ("data", "checkpoints", "tensorboard", "logs", "plots", "cache", "metrics.jsonl",
                  "conditioning.json", "generations.json", "demo.json", "stages.json", "report.md")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs" / "demo")
    parser.add_argument("--quick", action="store_true", help="a tiny budget (smoke test, ~1-2 min)")
    parser.add_argument("--train-iters", type=int, help="override the budget's training steps")
    parser.add_argument("--max-docs", type=int, help="override the budget's corpus size")
    parser.add_argument("--mix", help="corpus source shares, as build_demo_corpus.py --mix")
    parser.add_argument("--degraded-share", type=float, help="share of prose pieces with a junk copy")
    parser.add_argument("--seed", type=int, default=0, help="corpus, split and sampling seed")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "ixt-demo",
                        help="where the Python docs (prose) are kept once fetched")
    parser.add_argument("--no-python-docs", action="store_true",
                        help="prose from pydoc topics only (no apt-get download of python3.11-doc)")
    args = parser.parse_args(argv)
    settings = replace(QUICK) if args.quick else Settings()
    for name in ("train_iters", "max_docs", "mix", "degraded_share"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    return args, settings


def corpus_note(output: str, python_docs: bool) -> str:
    """The corpus tool's summary line, and a warning when the prose came without the Python
    docs (the tool degrades to pydoc topics when apt-get fails: say so, never silently)."""
    note = last_match(r"^(\d+ documents, .*)$", output)
    if not python_docs:
        note += "; prose from pydoc topics only (--no-python-docs)"
    elif "no Python documentation prose" in output:
        note += "; WARNING: python3.11-doc could not be fetched with apt-get, prose from pydoc topics only"
    return note


def annotate_note(summary_path: Path) -> str:
    summary = json.loads(summary_path.read_text())
    levels = summary.get("levels", {})
    return f"{summary['documents']} documents; levels 1-5: " + "/".join(str(levels.get(str(k), 0)) for k in range(1, 6))


def last_match(pattern: str, text: str, default: str = "") -> str:
    found = re.findall(pattern, text, flags=re.M)
    return found[-1] if found else default


def train_note(metrics: Path) -> str:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("split") != "validation"]
    valid = [r for r in rows if r.get("split") == "validation"]
    note = f"final lm loss {train[-1]['lm loss']:.3f} (train)" if train else "no training rows"
    return note + (f", {valid[-1]['lm loss']:.3f} (validation)" if valid else "")


def training_progress(line: str) -> Optional[str]:
    """A short console line for pretrain_ixt.py's progress and validation lines (the full
    lines are in logs/train.log)."""
    def field(name: str) -> str:
        found = re.search(rf"\| {name} ([\d.,]+)", line)
        return found.group(1) if found else "?"

    step = re.search(r"iteration +(\d+)/(\d+)", line)
    if step:
        return (f"step {step.group(1)}/{step.group(2)}: text loss {field('text loss')}, prefix loss "
                f"{field('prefix loss')}, {field('ms/iter')} ms/step, {field('tokens/s')} tokens/s")
    valid = re.search(r"validation at iteration (\d+)", line)
    if valid:
        levels = ", ".join(f"L{k} {v}" for k, v in re.findall(r"text loss level (\d) ([\d.]+)", line))
        return f"validation at step {valid.group(1)}: text loss {field('text loss')} ({levels})"
    return None


def parse_generation(output: str) -> dict:
    """The ``[prefix]``, ``[prompt]``, ``[output]`` lines of tools/generate.py (the output
    may span lines; it ends where log lines start again)."""
    if "[output] " not in output:
        raise StageError("tools/generate.py printed no [output] line:\n" + output[-2000:])
    head, _, text = output.partition("[output] ")
    text = re.split(r"\n\[\d\d:\d\d:\d\d rank \d+\]", text)[0]
    return {"prefix": last_match(r"^\[prefix\] (.*)$", head), "output": text.rstrip("\n")}


def main(argv=None) -> int:
    args, s = parse_args(argv)
    out = args.output_dir.resolve()
    data, ckpt = out / "data", out / "checkpoints"
    try:
        prepare_output_dir(out, OUTPUT_ENTRIES)
    except StageError as error:
        print(f"run_demo.py: error: {error}", file=sys.stderr)
        return 2
    data.mkdir(parents=True)
    stages = Stages(out, total=9)
    started = time.monotonic()
    print(f"IXT demo -> {out} ({'quick' if args.quick else 'full'} budget: {s.max_docs} documents, "
          f"{s.train_iters} steps of 16 x {s.seq_length} tokens, template {s.template})", flush=True)
    try:
        # 1. Corpus: code, math and prose, right and broken, from offline sources.
        corpus_cmd = python_cmd("tools/build_demo_corpus.py", "--output", data / "corpus.jsonl",
                                "--max-docs", s.max_docs, "--seed", args.seed, "--cache-dir", args.cache_dir,
                                "--mix", s.mix, "--degraded-share", s.degraded_share)
        if args.no_python_docs:
            corpus_cmd.append("--no-python-docs")
        stages.run("corpus", corpus_cmd, "building the corpus (stdlib, HumanEval, GSM8K, Python docs)",
                   note=lambda o: corpus_note(o, not args.no_python_docs))

        # 2. Feedback from the offline critics (python runs the tests, math checks answers).
        stages.run("annotate", python_cmd("tools/annotate_feedback.py", "--input", data / "corpus.jsonl",
                                          "--output", data / "annotated.jsonl", "--critic", "auto", "--no-progress",
                                          # One worker: CPython 3.11's ast.parse is not thread-safe
                                          # (gh-106905); two threads of the python critic can fail with
                                          # "AST constructor recursion depth mismatch". See docs/demo.md.
                                          "--workers", 1,
                                          "--summary-json", data / "annotation_summary.json"),
                   "critiquing every document with the offline critics (--critic auto)",
                   note=lambda _: annotate_note(data / "annotation_summary.json"))

        # 3. Held-out documents: whole groups (a program with its broken variants), by hash.
        split = {}

        def do_split() -> str:
            split.update(split_held_out(data / "annotated.jsonl", data / "train.jsonl", data / "heldout.jsonl",
                                        s.held_out_share, args.seed))
            return f"{split['train']} train, {split['held_out']} held-out documents"

        stages.step("split", do_split, f"keeping ~{s.held_out_share:.0%} of document groups aside (hash of the id)")

        # 4. Tokenizer, trained on the training documents only.
        stages.run("tokenizer", python_cmd("tools/train_tokenizer.py", "--input", data / "train.jsonl",
                                           "--model-prefix", data / "sp", "--vocab-size", s.vocab_size,
                                           "--model-type", "bpe"),
                   f"training a {s.vocab_size}-piece SentencePiece BPE",
                   note=lambda o: last_match(r"^(Wrote .*)$", o))

        # 5. Preprocessing: [<|feedback|> Quality: k/5 <|/feedback|>] text [eod] per document.
        stages.run("preprocess", python_cmd("tools/preprocess_data.py", "--input", data / "train.jsonl",
                                            "--output-prefix", data / "ds", "--tokenizer-type",
                                            "SentencePieceTokenizer", "--tokenizer-model", data / "sp.model",
                                            "--append-eod", "--workers", 2, "--prefix-template", s.template),
                   f"tokenizing with the {s.template} prefix template",
                   note=lambda o: last_match(r"(\d+ sequences, \d+ tokens, \d+ prefix tokens)", o))

        # 6. IXT training at TP=2 on two CPU processes (gloo).
        stages.run("train", torchrun_cmd(
            2, "pretrain_ixt.py", "--config", REPO / "examples" / "demo" / "demo.yaml",
            "--data-path", data / "ds_text_document", "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", data / "sp.model", "--tensor-model-parallel-size", 2,
            "--seq-length", s.seq_length, "--train-iters", s.train_iters, "--eval-interval", s.eval_interval,
            "--ixt-repeat-prefix", "--ixt-feedback-dropout", s.feedback_dropout, "--ixt-prefix-loss", "include",
            "--save", ckpt, "--log-file", out / "metrics.jsonl", "--tensorboard-dir", out / "tensorboard",
            "--data-cache-path", out / "cache"),
            f"training the GPT with IXT for {s.train_iters} steps at TP=2 (torchrun, 2 processes)",
            echo=training_progress,
            note=lambda _: train_note(out / "metrics.jsonl"))

        # 7. Conditioning on held-out text, loaded at PP=2: the checkpoint is resharded.
        stages.run("evaluate", torchrun_cmd(
            2, "tools/evaluate_conditioning.py", "--load", ckpt, "--pipeline-model-parallel-size", 2,
            "--input", data / "heldout.jsonl", "--prefix-template", s.template, "--max-docs", s.eval_docs,
            "--output", out / "conditioning.json"),
            "loss of held-out text under no / own / best / worst feedback, at PP=2 (resharded load)",
            note=lambda o: last_match(r"^(conditioning gap .*)$", o))

        # 8. Generation under the best and the worst feedback, at TP=1 (a third layout).
        generations = []

        def generate(kind: str, prompt: str, which: str) -> str:
            # Several commands in one stage: each logged on its own, one progress line in all.
            output = run_logged(python_cmd(
                "tools/generate.py", "--load", ckpt, "--prefix-template", s.template,
                "--feedback-level", GEN_LEVELS[which], "--prompt", prompt, "--max-new-tokens", s.gen_tokens,
                "--top-k", 20, "--temperature", 0.8, "--seed", args.seed), stages.logs / f"generate_{kind}_{which}.log")
            generations.append({"kind": kind, "prompt": prompt, "feedback": which, "level": GEN_LEVELS[which],
                                **parse_generation(output)})
            return output

        def do_generate() -> str:
            for kind, prompt in PROMPTS.items():
                for which in GEN_LEVELS:
                    generate(kind, prompt, which)
            (out / "generations.json").write_text(json.dumps(generations, indent=1, ensure_ascii=False) + "\n")
            return f"{len(generations)} samples"

        stages.step("generate", do_generate, f"sampling {len(PROMPTS)} prompts under the best (5/5) and the worst "
                                             "(1/5) feedback, at TP=1")

        # 9. Report: report.md + plots (python -m megatron_ixt.evaluation.report re-renders it).
        stages.save_timings(out / "stages.json")
        (out / "demo.json").write_text(json.dumps(
            {"settings": asdict(s), "quick": args.quick, "seed": args.seed, "split": split,
             "layouts": {"train": "TP=2", "evaluate": "PP=2", "generate": "TP=1"}}, indent=1) + "\n")
        stages.run("report", [sys.executable, "-m", "megatron_ixt.evaluation.report", str(out)],
                   "writing report.md and plots/*.png", note=lambda o: last_match(r"^(wrote .*)$", o))
    except StageError as error:
        print(f"\ndemo failed at stage {stages.index}/{stages.total}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    stages.save_timings(out / "stages.json")
    print(f"done in {time.monotonic() - started:.0f} s: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
