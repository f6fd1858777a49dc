"""Quality-level and critique prefixes side by side, against the same two references as
the demo (plain training, and plain training with a beginning-of-document token).

    python examples/ixt_vs_baseline/run.py --demo-dir outputs/demo      # after `make demo`: ~6 min
    python examples/ixt_vs_baseline/run.py --demo-dir /tmp/dq --output-dir /tmp/ivb   # after a --quick demo
    python examples/ixt_vs_baseline/results.py outputs/ixt_vs_baseline  # re-render results.md

The demo has already trained, per seed, plain, plain + BOS and IXT with critique prefixes
(``examples/demo/critique_template.yaml``) on its corpus, and measured them. This script
adds the one run the comparison lacks: IXT with the *quality-level* template
(``<|feedback|>Quality: k/5<|/feedback|>``, k from the same critics' scores) on the same
documents, tokenizer, model, flags, seeds and budget; measures it exactly as the demo
measured the others (examples/ixt_vs_baseline/measure.py: held-out loss on good documents
at every checkpoint, the critics' verdicts on sampled continuations); and writes
``results.md`` with both prefix kinds against the better reference.

Stages (each the project's real tool; logs in ``<output-dir>/logs``):
1. preprocess the demo's training documents with ``--prefix-template quality``;
2. train one run per seed, side by side (the demo's ``train_cmd``: identical flags);
3. measure it; copy the demo's measurements of the other runs;
4. ``results.md`` / ``results.json`` / ``loss_vs_tokens.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demo"))

from pipeline import REPO, StageError, Stages, prepare_output_dir, python_cmd, run_concurrently  # noqa: E402
from run_demo import Settings, run_name, train_cmd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import write_results  # noqa: E402

KIND = "ixtq"  # IXT with the quality-level template
OUTPUT_ENTRIES = ("data", "checkpoints", "cache", "logs", "metrics", "measurements", "results.md", "results.json",
                  "loss_vs_tokens.png", "stages.json")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", type=Path, default=REPO / "outputs" / "demo",
                        help="a finished demo output folder (examples/demo/run_demo.py)")
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs" / "ixt_vs_baseline")
    return parser.parse_args(argv)


def demo_settings(demo: Path) -> Settings:
    recorded = json.loads((demo / "demo.json").read_text())["settings"]
    settings = Settings()
    for name, value in recorded.items():
        setattr(settings, name, tuple(value) if name == "seeds" else value)
    return settings


def main(argv=None) -> int:
    args = parse_args(argv)
    demo, out = args.demo_dir.resolve(), args.output_dir.resolve()
    if not (demo / "demo.json").exists() or not (demo / "measurements").is_dir():
        print(f"run.py: error: --demo-dir {demo} is not a finished demo (no demo.json / measurements/); "
              "run `make demo` first", file=sys.stderr)
        return 2
    try:
        prepare_output_dir(out, OUTPUT_ENTRIES)
    except StageError as error:
        print(f"run.py: error: {error}", file=sys.stderr)
        return 2
    s = demo_settings(demo)
    data = out / "data"
    for folder in (data, out / "metrics", out / "measurements"):
        folder.mkdir(parents=True)
    demo_data = demo / "data"
    stages = Stages(out, total=4)
    started = time.monotonic()
    try:
        stages.run("preprocess", python_cmd(
            "tools/preprocess_data.py", "--input", demo_data / "train.jsonl", "--output-prefix", data / KIND,
            "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", demo_data / "sp.model",
            "--append-eod", "--workers", 2, "--prefix-template", "quality"),
            "the demo's training documents with --prefix-template quality")
        # train_cmd reads the tokenizer from the data folder: link the demo's.
        for name in ("sp.model", "sp.vocab"):
            if (demo_data / name).exists():
                (data / name).symlink_to(demo_data / name)

        def train() -> str:
            run_concurrently({f"train_{run_name(KIND, seed)}": train_cmd(KIND, seed, data, out, s)
                              for seed in s.seeds}, stages.logs)
            return f"{len(s.seeds)} runs of {s.train_iters} steps"

        stages.step("train", train, f"IXT with quality-level prefixes, seeds {', '.join(map(str, s.seeds))}")

        def measure() -> str:
            run_concurrently({f"measure_{run_name(KIND, seed)}": [
                sys.executable, str(Path(__file__).with_name("measure.py")),
                "--run", f"{run_name(KIND, seed)}={out / 'checkpoints' / run_name(KIND, seed)}", "--kind", "ixt",
                "--heldout", demo_data / "heldout_good.jsonl", "--prompts", demo_data / "prompts.jsonl",
                "--template", "quality", "--seq-length", s.seq_length, "--seed", 0,
                "--gen-tokens", s.gen_tokens, "--samples-per-prompt", s.samples_per_prompt,
                # The demo's text window and sample judging: every run scores the same tokens.
                "--max-text-tokens", s.max_text_tokens, "--window-template", s.template,
                "--sample-min-words", s.sample_min_words,
                "--output", out / "measurements" / f"{run_name(KIND, seed)}.json"]
                for seed in s.seeds}, stages.logs)
            for path in (demo / "measurements").glob("*.json"):
                shutil.copy(path, out / "measurements" / path.name)
            return "measured; the demo's measurements of its runs copied"

        stages.step("measure", measure, "held-out loss at every checkpoint, critics' verdicts on samples")
        stages.save_timings(out / "stages.json")
        stages.step("results", lambda: write_results(out, s.train_iters), "results.md, results.json, loss_vs_tokens.png")
    except StageError as error:
        print(f"\nixt_vs_baseline failed: {error}", file=sys.stderr)
        return 1
    stages.save_timings(out / "stages.json")
    print(f"done in {time.monotonic() - started:.0f} s: {out / 'results.md'}")
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
