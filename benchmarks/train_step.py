"""Training-step throughput: ms/iter, tokens/s and TFLOP/s per device for parallel layouts.

Each layout is a real ``torchrun pretrain_ixt.py`` run; the figure is the median step time
after warm-up, read from the run's per-iteration log.

    python benchmarks/train_step.py                       # tiny config, TP=1 and TP=2 on CPU
    python benchmarks/train_step.py --preset 1b --layouts tp1 --bf16   # ~1B model on one GPU
    python benchmarks/train_step.py --data gpt,ixt    # IXT batches vs plain GPT batches, same files
    python benchmarks/train_step.py --preset 1b --layouts tp1 --bf16 --data gpt \
        --tokenizer wheelhouse/tokenizer/tokenizer.json --save /tmp/ckpt   # as the GPU acceptance run

With ``--data gpt,ixt`` both runs read the same preprocessed real text (benchmarks/_corpus.py):
once as megatron-core GPT batches without document masks (plain pretraining: SDPA, flash on
CUDA), once as IXT trains on it (critique prefixes, packed documents with document masks:
FlexAttention on CUDA; prefix dropout; the IXT batch fields and loss reports), same shapes,
so the difference is IXT's whole per-step cost. The step clock syncs the device. The text is
tokenized by ``--tokenizer`` (a Hugging Face tokenizer.json, e.g. SmolLM2's 49,152 pieces
that ``make wheelhouse`` writes) or, by default, a SentencePiece model of 4,000 pieces
trained on the corpus; the rows name it, and the FLOPs count its vocabulary.

``--save DIR`` keeps the trained model: the run saves its last iteration there (one layout,
one ``--data``), for ``benchmarks/generate.py --engine ours --load DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_ixt.config import parse_config  # noqa: E402
from megatron_ixt.model.flops import training_flops_per_iteration  # noqa: E402
from megatron_ixt.model.gpt import padded_vocab_size  # noqa: E402
from megatron_ixt.tokenizers.build import tokenizer_from_config  # noqa: E402

LAYOUTS = {
    "tp1": (1, []),
    "tp2": (2, ["--tensor-model-parallel-size", "2"]),
    "pp2": (2, ["--pipeline-model-parallel-size", "2"]),
    "dp2": (2, []),
}
# A ~1.2B-parameter Llama-style model (24 x 2048, GQA 16/8, SwiGLU 5632, seq 2048).
PRESETS = {
    "tiny": ["--config", str(REPO / "examples/configs/tiny.yaml"), "--micro-batch-size", "4", "--global-batch-size", "8"],
    "1b": ["--config", str(REPO / "examples/configs/tiny.yaml"), "--num-layers", "24", "--hidden-size", "2048",
           "--num-attention-heads", "16", "--num-query-groups", "8", "--ffn-hidden-size", "5632", "--seq-length", "2048",
           "--vocab-size", "32000", "--micro-batch-size", "4", "--global-batch-size", "16"],
}


def data_args(kind: str, tokenizer: Optional[Path] = None) -> tuple[list, str]:
    """The data and tokenizer flags of ``--data kind``, and the tokenizer's name."""
    if kind == "mock":
        return ["--mock-data"], "NullTokenizer (mock data)"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _corpus import build_corpus

    corpus = build_corpus(Path(tempfile.gettempdir()) / "megatron_ixt_bench", tokenizer=tokenizer)
    common = ["--tokenizer-type", corpus["tokenizer_type"], "--tokenizer-model", corpus["tokenizer_model"],
              "--split", "100,0,0"]
    if kind == "ixt":  # as IXT trains: prefixes, packed documents with document masks, prefix dropout
        return ["--data-path", corpus["ixt"], *common, "--reset-attention-mask", "--reset-position-ids",
                "--ixt-feedback-dropout", "0.1"], corpus["tokenizer_name"]
    return ["--data-path", corpus["plain"], *common], corpus["tokenizer_name"]  # the same tokens, no masks


def run_layout(name: str, preset: list, extra: list, iters: int, warmup: int, data: str = "mock",
               tokenizer: Optional[Path] = None, save: Optional[Path] = None) -> dict:
    nproc, layout_args = LAYOUTS[name]
    data_flags, tokenizer_name = data_args(data, tokenizer)
    # The last iteration saved (pretrain_ixt.py saves when the interval divides the iteration).
    save_flags = ["--save", str(save.resolve()), "--save-interval", str(iters)] if save else []
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "m.jsonl"
        args = [*preset, *layout_args, *extra, *data_flags, *save_flags, "--train-iters", str(iters),
                "--eval-interval", "0", "--lr-warmup-iters", "0", "--log-interval", str(iters), "--log-file", str(log)]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               str(REPO / "pretrain_ixt.py"), *args]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, os.cpu_count() // nproc)))}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            raise SystemExit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        rows = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [r["step_ms"] for r in rows if "step_ms" in r][warmup:]
    cfg, _ = parse_config(args)  # presets set --global-batch-size explicitly
    ms = statistics.median(steps)
    tokens = cfg.training.global_batch_size * cfg.model.seq_length
    # The run's own vocabulary (NullTokenizer: --vocab-size + EOD + the two feedback delimiters;
    # a tokenizer.json without the delimiters: its pieces + 2), as the model pads it.
    vocab = tokenizer_from_config(cfg.tokenizer).vocab_size
    flops = training_flops_per_iteration(cfg, padded_vocab_size(vocab, cfg))
    return {"layout": f"{name}/{data}", "procs": nproc, "ms_per_iter": ms, "tokens_per_s": tokens / (ms / 1000),
            "tflops_per_device": flops / (ms / 1000) / nproc / 1e12, "loss": rows[-1].get("lm loss"),
            "mem_gib": max(r.get("mem_gib", 0.0) for r in rows), "tokenizer": tokenizer_name, "vocab_size": vocab}


def default_peak_tflops(bf16: bool):
    """This GPU's dense peak from the exact-name table (None on CPU or an unknown GPU)."""
    import torch

    from megatron_ixt.model.flops import PEAK_TFLOPS

    if not torch.cuda.is_available() or torch.cuda.get_device_name() not in PEAK_TFLOPS:
        return None
    peak = PEAK_TFLOPS[torch.cuda.get_device_name()][0]
    return peak if bf16 else peak / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--layouts", default="tp1,tp2")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--data", default="mock", help="comma list of mock, gpt, ixt (gpt/ixt: real text)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak for MFU (default: from the GPU's name, e.g. 989 for H100 SXM / H200 BF16)")
    parser.add_argument("--emit-results", action="store_true",
                        help="also print each row as a 'RESULT {json}' line (benchmarks/gpu_check.py reads them)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="a Hugging Face tokenizer.json for --data gpt/ixt (default: a SentencePiece model of "
                             "4,000 pieces trained on the corpus)")
    parser.add_argument("--save", type=Path, default=None,
                        help="save the last iteration into this folder (pretrain_ixt.py --save/--save-interval); "
                             "one layout and one --data only")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more pretrain_ixt.py flags")
    args = parser.parse_args()
    if args.save and ("," in args.layouts or "," in args.data):
        parser.error("--save keeps one run's model: give one --layouts and one --data")
    extra = (["--bf16"] if args.bf16 else []) + args.extra
    args.peak_tflops = args.peak_tflops or default_peak_tflops(args.bf16)
    print(f"preset {args.preset}, {args.iters} iterations ({args.warmup} warm-up), extra flags {extra or 'none'}"
          + (f", saved into {args.save}" if args.save else ""))
    print(f"{'layout':12} {'procs':>5} {'ms/iter':>10} {'tokens/s':>12} {'TFLOP/s/dev':>12} {'peak mem GiB':>13}"
          + ("    MFU" if args.peak_tflops else ""))
    for name in args.layouts.split(","):
        base = None
        for data in args.data.split(","):
            r = run_layout(name, PRESETS[args.preset], extra, args.iters, args.warmup, data, args.tokenizer, args.save)
            mfu = f"  {100 * r['tflops_per_device'] / args.peak_tflops:5.1f}%" if args.peak_tflops else ""
            base = base or r["ms_per_iter"]
            ratio = f"  {100 * r['ms_per_iter'] / base:.1f}% of {args.data.split(',')[0]}" if "," in args.data else ""
            print(f"{r['layout']:12} {r['procs']:>5} {r['ms_per_iter']:>10.1f} {r['tokens_per_s']:>12,.0f} "
                  f"{r['tflops_per_device']:>12.4f} {r['mem_gib']:>13.2f}{mfu}{ratio}", flush=True)
            if args.emit_results:
                row = {"item": f"{args.preset} {r['layout']} {' '.join(extra)}", "status": "ok",
                       "ms_per_iter": round(r["ms_per_iter"], 1), "tokens_per_s": round(r["tokens_per_s"]),
                       "tflops_per_device": round(r["tflops_per_device"], 1), "peak_mem_gib": round(r["mem_gib"], 2),
                       "tokenizer": r["tokenizer"], "vocab_size": r["vocab_size"]}
                if args.peak_tflops:
                    row["mfu_percent"] = round(100 * r["tflops_per_device"] / args.peak_tflops, 1)
                print("RESULT " + json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
