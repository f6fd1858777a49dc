"""The IXT demo, end to end on real data on a CPU, measured fairly: corpus with realistic
flaws -> the critics' critiques -> tokenizer -> four datasets (plain, plain with a
beginning-of-document token, IXT with critique prefixes, the same critique for every
document) -> four trainings per seed, two seeds, side by side -> held-out loss of every checkpoint and the critics' verdicts on
sampled continuations -> conditioning by flaw type, measured at PP=2 -> report.md.

    python examples/demo/run_demo.py --output-dir outputs/demo          # see docs/demo.md, "Wall time"
    python examples/demo/run_demo.py --output-dir /tmp/demo --quick     # ~4 min, a smoke test

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

from pipeline import (CORPUS_MIX, REPO, StageError, Stages, prepare_output_dir, python_cmd, run_logged,  # noqa: E402
                      read_jsonl, run_concurrently, split_held_out, torchrun_cmd, write_jsonl)
from references import RUN_KINDS, best_worst_by_domain, is_good, task_prompts  # noqa: E402


@dataclass
class Settings:
    """The demo's budget: about 1,000 CPU-seconds of training (docs/demo.md, "Wall time")."""

    max_docs: int = 2400
    """Documents in the corpus (annotation runs at ~40-60 docs/s)."""
    mix: str = CORPUS_MIX
    """Shares of the corpus sources (build_corpus.py --mix; stdlib code gets the rest)."""
    flawed_share: float = 0.7
    """Share of prose pieces replaced by a flawed version (misspelt, words swapped or dropped,
    two pages spliced)."""
    prose_flaws: str = "misspellings,swapped_words,dropped_words,spliced"
    """Flaw kinds planted (build_corpus.py --prose-flaws). Shuffled sentences are left
    out: the text critic caught 2 % of them, so nearly all kept a good level (docs/demo.md)."""
    flaw_rate: float = 0.25
    """Share of words a word-level flaw touches. At 0.1 the critics caught 89 % of misspelt
    pieces, 65 % swapped, 20 % dropped; at 0.25 about 90 %, 89 % and 67 % (docs/demo.md)."""
    prose_chunk_chars: int = 1500
    """Prose documents of ~250 words: most fit one 512-token sample with their prefix."""
    held_out_share: float = 0.15
    """Share of document groups kept out of training for all evaluations."""
    vocab_size: int = 4000
    train_iters: int = 300
    """Training steps of 2 x 512 tokens per run: 300 steps see 0.31M tokens. Fewer, smaller
    steps learn more here: at the same tokens and about the same CPU time, 400 steps of 2
    samples ended 0.5 nats/token lower than 100 steps of 8 (a model this small learns from
    the number of updates, not from larger batches). 300 rather than 400 keeps `make demo`
    from a fresh clone under 15 minutes on two cores (docs/demo.md, "Wall time")."""
    save_interval: int = 75
    """A checkpoint (a point on the loss-vs-tokens curves) every this many steps."""
    seq_length: int = 512
    global_batch_size: int = 2
    seeds: tuple = (1234, 1235)
    """Training seeds; every run of a seed sees the same documents in the same order."""
    eval_docs: int = 200
    """Held-out documents measured under the four conditions at PP=2 (gap by flaw type)."""
    prompts: int = 80
    """Task-metric prompts (held-out good prose; the split yields about 50), one
    continuation each per run and seed: pooled over the two seeds about 100 samples per
    condition. Sampling re-runs the whole context per token (no KV cache), so every sample
    costs: with two per prompt and 64 tokens the measure stage alone took 10 minutes."""
    samples_per_prompt: int = 1
    gen_tokens: int = 48
    max_text_tokens: int = 256
    """Text tokens scored per held-out document on the curves (the same for every run)."""
    sample_min_words: int = 15
    """The spelling rule's least evidence on a 48-token sample (documents: 40 words)."""
    template: str = str(REPO / "examples" / "demo" / "critique_template.yaml")
    """Prefix template: the critique template with a 48-token budget (critique_template.yaml)."""
    same_template: str = str(REPO / "examples" / "demo" / "same_critique_template.yaml")
    """The same-critique control's template: one fixed critique of the same budget for every document."""
    kinds: tuple = ("plain", "bos", "ixt")
    """Runs per seed (references.RUN_KINDS): plain, plain + BOS, IXT; ``--kinds
    plain,bos,ixt,same`` adds the same-critique control (two more runs: about 450 more
    CPU-seconds, which takes the demo past 15 minutes on two cores; docs/demo.md)."""
    feedback_dropout: float = 0.1
    """Share of annotated documents trained without their prefix (keeps an unconditional mode)."""


QUICK = Settings(max_docs=200, held_out_share=0.2, vocab_size=1000, train_iters=10, save_interval=5,
                 seq_length=256, global_batch_size=8, eval_docs=16, prompts=6, gen_tokens=16,
                 kinds=("plain", "bos", "ixt", "same"))

OUTPUT_ENTRIES = ("data", "checkpoints", "logs", "plots", "cache", "metrics", "measurements",
                  "conditioning.json", "demo.json", "stages.json", "report.md", "results.json")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs" / "demo")
    parser.add_argument("--quick", action="store_true", help="a tiny budget (smoke test, ~4 min)")
    parser.add_argument("--train-iters", type=int, help="override the budget's training steps")
    parser.add_argument("--save-interval", type=int, help="override the checkpoint interval")
    parser.add_argument("--max-docs", type=int, help="override the budget's corpus size")
    parser.add_argument("--mix", help="corpus source shares, as build_corpus.py --mix")
    parser.add_argument("--flawed-share", type=float, help="share of prose pieces with a planted flaw")
    parser.add_argument("--flaw-rate", type=float, help="share of words a word-level flaw touches (default 0.25)")
    parser.add_argument("--prose-flaws", help="flaw kinds to plant, as build_corpus.py --prose-flaws")
    parser.add_argument("--seeds", help="comma-separated training seeds (default 1234,1235)")
    parser.add_argument("--kinds", help="comma-separated runs per seed, from plain, bos, ixt, same "
                                        "(default plain,bos,ixt; --quick: all four; the report needs "
                                        "plain, bos and ixt)")
    parser.add_argument("--seed", type=int, default=0, help="corpus, split and sampling seed")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "ixt-demo",
                        help="where the Python docs (prose) are kept once fetched")
    parser.add_argument("--no-python-docs", action="store_true",
                        help="prose from pydoc topics only (no apt-get download of python3.11-doc)")
    args = parser.parse_args(argv)
    settings = replace(QUICK) if args.quick else Settings()
    for name in ("train_iters", "save_interval", "max_docs", "mix", "flawed_share", "flaw_rate", "prose_flaws"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    if args.seeds:
        settings.seeds = tuple(int(s) for s in args.seeds.split(","))
    if args.kinds:
        settings.kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
        unknown = sorted(set(settings.kinds) - set(RUN_KINDS))
        if unknown or not {"plain", "bos", "ixt"} <= set(settings.kinds):
            parser.error(f"--kinds {args.kinds!r}: choose from {', '.join(RUN_KINDS)}; plain, bos and ixt are needed")
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


def run_name(kind: str, seed: int) -> str:
    return f"{kind}_s{seed}"


def train_cmd(kind: str, seed: int, data: Path, out: Path, s: Settings) -> list[str]:
    """Identical flags for every run; only the dataset (and the seed) differ. One process
    each: the runs share the two cores side by side."""
    name = run_name(kind, seed)
    return python_cmd(
        "pretrain_ixt.py", "--config", REPO / "examples" / "demo" / "demo.yaml",
        "--data-path", data / f"{kind}_text_document", "--tokenizer-type", "SentencePieceTokenizer",
        "--tokenizer-model", data / "sp.model", "--seq-length", s.seq_length,
        "--micro-batch-size", s.global_batch_size, "--global-batch-size", s.global_batch_size,
        "--train-iters", s.train_iters, "--eval-interval", s.train_iters, "--save-interval", s.save_interval,
        "--seed", seed, "--ixt-repeat-prefix", "--ixt-feedback-dropout", s.feedback_dropout,
        "--ixt-prefix-loss", "include", "--save", out / "checkpoints" / name,
        "--log-file", out / "metrics" / f"{name}.jsonl", "--data-cache-path", out / "cache" / name)


def main(argv=None) -> int:
    args, s = parse_args(argv)
    out = args.output_dir.resolve()
    data = out / "data"
    try:
        prepare_output_dir(out, OUTPUT_ENTRIES)
    except StageError as error:
        print(f"run_demo.py: error: {error}", file=sys.stderr)
        return 2
    for folder in (data, out / "metrics", out / "measurements"):
        folder.mkdir(parents=True)
    stages = Stages(out, total=9)
    started = time.monotonic()
    runs = [(kind, seed) for seed in s.seeds for kind in s.kinds]
    print(f"IXT demo -> {out} ({'quick' if args.quick else 'full'} budget: {s.max_docs} documents; "
          f"{len(runs)} runs ({', '.join(s.kinds)} x seeds {', '.join(map(str, s.seeds))}) of {s.train_iters} steps of "
          f"{s.global_batch_size} x {s.seq_length} tokens)", flush=True)
    try:
        # 1. Corpus: code, math and prose, most of it flawed; the builder only makes variants.
        corpus_cmd = python_cmd("examples/demo/build_corpus.py", "--output", data / "corpus.jsonl",
                                "--max-docs", s.max_docs, "--seed", args.seed, "--cache-dir", args.cache_dir,
                                "--mix", s.mix, "--flawed-share", s.flawed_share, "--wrong-share", 1.0,
                                "--prose-chunk-chars", s.prose_chunk_chars, "--prose-flaws", s.prose_flaws,
                                "--flaw-rate", s.flaw_rate)
        if args.no_python_docs:
            corpus_cmd.append("--no-python-docs")
        stages.run("corpus", corpus_cmd, "building the corpus (stdlib, HumanEval, GSM8K, Python docs; flaws planted)",
                   note=lambda o: corpus_note(o, not args.no_python_docs))

        # 2. The critics decide every level (python runs the tests, math checks each step,
        # the text critic reads spelling, word order, coherence, repetition).
        stages.run("annotate", python_cmd("tools/annotate_feedback.py", "--input", data / "corpus.jsonl",
                                          "--output", data / "annotated.jsonl", "--critic", "auto", "--no-progress",
                                          "--workers", 1, "--summary-json", data / "annotation_summary.json"),
                   "critiquing every document with the offline critics (--critic auto)",
                   note=lambda _: annotate_note(data / "annotation_summary.json"))

        # 3. Held-out groups; the best and worst feedback of each domain; task prompts.
        split = {}

        def do_split() -> str:
            split.update(split_held_out(data / "annotated.jsonl", data / "train.jsonl", data / "heldout.jsonl",
                                        s.held_out_share, args.seed))
            train = read_jsonl(data / "train.jsonl")
            targets = best_worst_by_domain(train)
            (data / "best_worst.json").write_text(json.dumps(targets, indent=1) + "\n")
            held = [{**d, "best_feedback": targets[d.get("domain", "prose")]["best"],
                     "worst_feedback": targets[d.get("domain", "prose")]["worst"]}
                    for d in read_jsonl(data / "heldout.jsonl") if d.get("domain", "prose") in targets]
            write_jsonl(data / "heldout_eval.jsonl", held[: s.eval_docs])
            good = [d for d in held if is_good(d)]
            write_jsonl(data / "heldout_good.jsonl", good)
            prompts = task_prompts(good, s.prompts)
            write_jsonl(data / "prompts.jsonl", prompts)
            return (f"{split['train']} train, {split['held_out']} held-out documents ({len(good)} good: level 4-5); "
                    f"{len(prompts)} task prompts")

        stages.step("split", do_split, f"keeping ~{s.held_out_share:.0%} of document groups aside (hash of the id)")

        # 4. Tokenizer, trained on the training documents only.
        stages.run("tokenizer", python_cmd("tools/train_tokenizer.py", "--input", data / "train.jsonl",
                                           "--model-prefix", data / "sp", "--vocab-size", s.vocab_size,
                                           "--model-type", "bpe"),
                   f"training a {s.vocab_size}-piece SentencePiece BPE",
                   note=lambda o: last_match(r"^(Wrote .*)$", o))

        # 5. Three datasets of the same documents: plain, plain with <s>, IXT with critiques.
        def preprocess() -> str:
            notes = []
            for kind in s.kinds:
                template, extra = RUN_KINDS[kind]
                template = {"critique": s.template, "same": s.same_template}.get(template, template)
                output = run_logged(python_cmd(
                    "tools/preprocess_data.py", "--input", data / "train.jsonl", "--output-prefix", data / kind,
                    "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", data / "sp.model",
                    "--append-eod", "--workers", 2, "--prefix-template", template, *extra),
                    stages.logs / f"preprocess_{kind}.log")
                notes.append(f"{kind}: " + last_match(r"(\d+ sequences, \d+ tokens, \d+ prefix tokens)", output))
            return "; ".join(notes)

        stages.step("preprocess", preprocess, "plain (--prefix-template none), bos (--prepend-bos), "
                                              "ixt (critique prefixes, 48-token budget), same (one fixed critique)")

        # 6. All runs side by side, one process each, same flags.
        def progress() -> str:
            done = []
            for kind, seed in runs:
                path = out / "metrics" / f"{run_name(kind, seed)}.jsonl"
                rows = path.read_text().splitlines() if path.exists() else []
                done.append(f"{run_name(kind, seed)} {json.loads(rows[-1])['iteration'] if rows else 0}")
            return f"steps of {s.train_iters}: " + ", ".join(done)

        def train() -> str:
            run_concurrently({f"train_{run_name(k, seed)}": train_cmd(k, seed, data, out, s) for k, seed in runs},
                             stages.logs, progress)
            return progress()

        stages.step("train", train, f"{len(runs)} runs of {s.train_iters} steps, side by side (a checkpoint "
                                    f"every {s.save_interval})")

        # 7. Held-out loss of every checkpoint; the critics' verdicts on sampled continuations.
        def measure() -> str:
            run_concurrently({f"measure_{run_name(k, seed)}": [
                sys.executable, str(REPO / "examples" / "ixt_vs_baseline" / "measure.py"),
                "--run", f"{run_name(k, seed)}={out / 'checkpoints' / run_name(k, seed)}", "--kind", k,
                "--heldout", data / "heldout_good.jsonl", "--prompts", data / "prompts.jsonl",
                "--template", s.same_template if k == "same" else s.template, "--seq-length", s.seq_length, "--seed", args.seed,
                "--gen-tokens", s.gen_tokens, "--samples-per-prompt", s.samples_per_prompt,
                "--max-text-tokens", s.max_text_tokens, "--sample-min-words", s.sample_min_words,
                "--output", out / "measurements" / f"{run_name(k, seed)}.json"]
                for k, seed in runs}, stages.logs)
            return f"{len(runs)} runs measured"

        stages.step("measure", measure, "held-out loss on good documents at every checkpoint; critics judge "
                                        "sampled continuations")

        # 8. Conditioning by flaw type on all held-out documents, at PP=2 (a resharded load).
        ixt0 = run_name("ixt", s.seeds[0])
        stages.run("evaluate", torchrun_cmd(
            2, "tools/evaluate_conditioning.py", "--load", out / "checkpoints" / ixt0,
            "--pipeline-model-parallel-size", 2, "--input", data / "heldout_eval.jsonl",
            "--prefix-template", s.template, "--max-docs", s.eval_docs, "--output", out / "conditioning.json"),
            f"loss of held-out text under no / own / best / worst feedback ({ixt0}, PP=2)",
            note=lambda o: last_match(r"^(conditioning gap .*)$", o))

        # 9. Report.
        stages.save_timings(out / "stages.json")
        (out / "demo.json").write_text(json.dumps(
            {"settings": asdict(s), "quick": args.quick, "seed": args.seed, "split": split,
             "runs": [run_name(k, seed) for k, seed in runs],
             "layouts": {"train": "TP=1, one process per run", "evaluate": "PP=2", "measure": "TP=1"}},
            indent=1) + "\n")
        stages.run("report", python_cmd("examples/demo/report.py", out),
                   "writing report.md, results.json and plots/*.png", note=lambda o: last_match(r"^(headline: .*)$", o))
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
