"""Generation throughput: this project's batched KV-cache generator against transformers'
``generate`` and against the uncached loop it replaced, on SmolLM2-135M (fp32, CPU).

    python benchmarks/generate.py                    # all three, each in its own process
    python benchmarks/generate.py --prompts 16 --new-tokens 32 --loop-prompts 2   # quicker
    python benchmarks/generate.py --engine ours --load CKPT \
        --prompts 64 --batch-size 64 --emit-results      # one engine (the GPU acceptance run's phase)

The workload: ``--prompts`` prompts cut from real text (the Python standard library) to
lengths drawn uniformly from ``--min-length``..``--max-length`` tokens, greedy, exactly
``--new-tokens`` new tokens each (the end of text is blocked on both sides, so that both
decode the same number of tokens), all in one batch of ``--batch-size``.

* ``ours``: ``evaluation.generation.generate`` on the imported checkpoint (TP=1);
* ``transformers``: ``model.generate`` on the same weights, the same prompts, the same batch
  size, left-padded with an attention mask, with its KV cache (``use_cache=True``);
* ``loop``: the generation loop of this repository before the KV cache (re-run the whole
  context for every token, one prompt at a time; copied below from ``evaluation/generation.py``
  at commit 7b60711), on the first ``--loop-prompts`` prompts and ``--loop-new-tokens`` tokens,
  against ours on exactly that subsample.

Each engine runs in a fresh process; the figures are the generation's own wall time (model
loading excluded), tokens/s, and the process's peak resident memory. The ratios compare
tokens/s measured in this one run. Greedy tokens of ``ours`` and ``loop`` are compared
token for token.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CACHE = REPO / ".cache" / "bench-generate"
RESULT_PREFIX = "RESULT "
"""A figure for the GPU acceptance run (``--emit-results``, benchmarks/gpu_check.py)."""
ROW_PREFIX = "ROW "
"""One engine's whole result (generated ids included) for this script's comparison."""


def prompt_ids(tokenize, count: int, low: int, high: int, seed: int = 0) -> list[list[int]]:
    """``count`` prompts from the standard library's modules, cut to random lengths."""
    rng = random.Random(seed)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    prompts = []
    for path in files:
        ids = list(tokenize(path.read_text(errors="replace")[:8000]))
        length = rng.randint(low, high)
        if len(ids) >= length:
            prompts.append(ids[:length])
        if len(prompts) == count:
            return prompts
    raise SystemExit(f"only {len(prompts)} standard-library files are {high} tokens long")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


# -- the engines (each in its own process) -------------------------------------------------

def run_ours(args) -> dict:
    import torch

    from megatron_ixt.evaluation.engine import load_for_inference
    from megatron_ixt.evaluation.generation import Request, SamplingConfig, generate
    from megatron_ixt.runtime.distributed import destroy_distributed
    from megatron_ixt.runtime.logs import setup_logging

    setup_logging()
    inference = argparse.Namespace(load=args.load, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                                   tokenizer_type=None, tokenizer_model=None, vocab_file=None, merge_file=None,
                                   prefix_template=None)
    _, model, tokenizer = load_for_inference(inference)
    prompts = prompt_ids(tokenizer.tokenize, args.prompts, args.min_length, args.max_length)
    if args.subsample:
        prompts = prompts[:args.subsample]
    requests = [Request(p, args.new_tokens) for p in prompts]
    sampling = SamplingConfig(greedy=True)
    cuda = torch.cuda.is_available()
    started = time.perf_counter()
    completions = generate(model, tokenizer, requests, sampling, batch_size=args.batch_size,
                           blocked=[tokenizer.eod])
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens = sum(len(c.ids) for c in completions)
    result = {"engine": "ours", "prompts": len(prompts), "batch_size": args.batch_size, "tokens": tokens,
              "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
              "peak_rss_gib": round(peak_rss_gib(), 2), "ids": [c.ids for c in completions]}
    if cuda:
        result["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    destroy_distributed()
    return result


def run_transformers(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.hf)
    model = AutoModelForCausalLM.from_pretrained(args.hf, local_files_only=True, dtype=torch.float32).eval()
    prompts = prompt_ids(lambda text: tokenizer(text)["input_ids"], args.prompts, args.min_length, args.max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokens = 0
    started = time.perf_counter()
    for first in range(0, len(prompts), args.batch_size):
        batch = prompts[first:first + args.batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                                 min_new_tokens=args.new_tokens, do_sample=False, use_cache=True, pad_token_id=pad)
        tokens += (out.shape[1] - width) * len(batch)
    seconds = time.perf_counter() - started
    return {"engine": "transformers", "prompts": len(prompts), "batch_size": args.batch_size, "tokens": tokens,
            "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "peak_rss_gib": round(peak_rss_gib(), 2)}


def run_loop(args) -> dict:
    """The loop this repository generated with before the KV cache (commit 7b60711,
    ``evaluation/generation.py``'s ``continue_ids``, greedy): the whole context through the
    model for every new token, one prompt at a time, every position's logits gathered."""
    import torch

    from megatron_ixt.evaluation.engine import load_for_inference
    from megatron_ixt.runtime.distributed import destroy_distributed
    from megatron_ixt.runtime.logs import setup_logging

    setup_logging()
    inference = argparse.Namespace(load=args.load, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                                   tokenizer_type=None, tokenizer_model=None, vocab_file=None, merge_file=None,
                                   prefix_template=None)
    _, model, tokenizer = load_for_inference(inference)
    prompts = prompt_ids(tokenizer.tokenize, args.prompts, args.min_length, args.max_length)[:args.subsample]
    blocked = [tokenizer.feedback_open_id, tokenizer.feedback_close_id, tokenizer.eod]
    outputs, started = [], time.perf_counter()
    for context in prompts:
        context, out = list(context), []
        for _ in range(args.new_tokens):
            logits = model.logits(torch.tensor([context]))[0, -1].float().cpu()
            logits[tokenizer.vocab_size:] = float("-inf")
            logits[blocked] = float("-inf")
            token = int(torch.argmax(logits))
            context.append(token)
            out.append(token)
        outputs.append(out)
    seconds = time.perf_counter() - started
    tokens = sum(map(len, outputs))
    destroy_distributed()
    return {"engine": "loop", "prompts": len(prompts), "batch_size": 1, "tokens": tokens,
            "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 2),
            "peak_rss_gib": round(peak_rss_gib(), 2), "ids": outputs}


# -- the comparison ------------------------------------------------------------------------

def prepare() -> tuple[Path, Path]:
    """SmolLM2-135M-Instruct as a Hugging Face folder and as this project's checkpoint (TP=1)."""
    from tests.real_model import smollm2_folder

    hf = smollm2_folder(CACHE / "hf")
    ckpt = CACHE / "checkpoint"
    if not (ckpt / "latest_checkpointed_iteration.txt").exists():
        subprocess.run([sys.executable, REPO / "tools" / "convert_checkpoint.py", "--from", "hf", "--input", hf,
                        "--save", ckpt, "--seq-length", "2048"], check=True, stdout=subprocess.DEVNULL)
    return hf, ckpt


def engine(args, name: str, **overrides) -> dict:
    flags = {**vars(args), **overrides, "engine": name}
    cmd = [sys.executable, __file__]
    for key, value in flags.items():
        if value is None or value is False or key in ("emit_results",):
            continue
        cmd += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(ROW_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(ROW_PREFIX):])


def show(row: dict) -> str:
    return (f"{row['engine']:>12}: {row['prompts']:>3} prompts, batch {row['batch_size']:>3}, {row['tokens']:>6} tokens "
            f"in {row['seconds']:>7.1f} s = {row['tokens_per_s']:>7.1f} tokens/s, peak RSS {row['peak_rss_gib']:.2f} GiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("ours", "transformers", "loop"), help="run one engine in this process")
    parser.add_argument("--load", help="our checkpoint (default: SmolLM2-135M imported)")
    parser.add_argument("--hf", help="the Hugging Face folder (default: SmolLM2-135M)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--min-length", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--loop-prompts", type=int, default=2, help="prompts of the uncached loop's subsample")
    parser.add_argument("--loop-new-tokens", type=int, default=32)
    parser.add_argument("--subsample", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--emit-results", action="store_true", help="print the figures as RESULT {json} lines")
    args = parser.parse_args()
    if args.engine:
        row = {"ours": run_ours, "transformers": run_transformers, "loop": run_loop}[args.engine](args)
        print(show(row), flush=True)
        if args.emit_results:
            print(RESULT_PREFIX + json.dumps({"item": f"generate {row['engine']}", "status": "ok",
                                              **{k: v for k, v in row.items() if k != "ids"}}), flush=True)
        print(ROW_PREFIX + json.dumps(row), flush=True)
        return 0

    hf, ckpt = prepare()
    args.hf, args.load = args.hf or str(hf), args.load or str(ckpt)
    print(f"SmolLM2-135M-Instruct, fp32, greedy; {args.prompts} prompts of {args.min_length}-{args.max_length} tokens "
          f"(real text) x {args.new_tokens} new tokens, batch {args.batch_size}", flush=True)
    ours, theirs = engine(args, "ours"), engine(args, "transformers")
    for row in (ours, theirs):
        print(show(row), flush=True)
    print(f"ours / transformers: {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x tokens/s, "
          f"{ours['peak_rss_gib'] / theirs['peak_rss_gib']:.2f}x peak memory", flush=True)
    if args.loop_prompts:
        sub = dict(subsample=args.loop_prompts, new_tokens=args.loop_new_tokens)
        loop = engine(args, "loop", **sub)
        cached = engine(args, "ours", batch_size=1, **sub)
        print(f"subsample of {args.loop_prompts} prompts x {args.loop_new_tokens} tokens, one prompt at a time:")
        for row in (cached, loop):
            print(show(row), flush=True)
        print(f"KV cache / uncached loop: {cached['tokens_per_s'] / loop['tokens_per_s']:.1f}x tokens/s; "
              f"same greedy tokens: {'yes' if cached['ids'] == loop['ids'] else 'NO'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
