"""Does loading stall the step? Time the training process waits for each micro-batch of the
real stream (megatron_ixt/data/loader.py: IXT dataset -> DataLoader -> typed Batch), with
``--num-workers`` 0 (reads in the training process) and 2 (the default), while the training
process "computes" for a fixed time per micro-batch.

    python benchmarks/loader.py
    python benchmarks/loader.py --seq-length 8192 --micro-batch-size 1 --compute-ms 0 25 100

The compute is a sleep: on a GPU the training process mostly waits for kernels, and a sleep
leaves the CPU to the workers as that wait does (on this CPU machine real compute would
compete with the workers for the same cores, which a GPU run does not). Data: the real
preprocessed corpus of benchmarks/_corpus.py (Python sources with 70% feedback prefixes).
Reported: the median and 95th percentile of the wait per micro-batch, and the share of the
step it costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _corpus import build_corpus  # noqa: E402
from dataloader import build_real  # noqa: E402
from megatron.core import parallel_state  # noqa: E402

from megatron_ixt.config import parse_config  # noqa: E402
from megatron_ixt.data.ixt_dataset import IXTDataset, IXTDatasetConfig  # noqa: E402
from megatron_ixt.data.loader import training_stream  # noqa: E402
from megatron_ixt.tokenizers.build import build_tokenizer  # noqa: E402
from megatron_ixt.runtime import cpu_compat  # noqa: E402
from megatron_ixt.runtime.distributed import ParallelLayout  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def waits(cfg, dataset, compute_ms: float, micro_batches: int) -> list[float]:
    """Milliseconds blocked in the stream per micro-batch (the first, which includes the
    workers' start-up, is left out)."""
    it = training_stream(cfg, ParallelLayout.from_megatron(), dataset, 0, "none").iterators()
    out = []
    for _ in range(micro_batches + 1):
        start = time.perf_counter()
        next(it)
        out.append(1000 * (time.perf_counter() - start))
        time.sleep(compute_ms / 1000)
    return out[1:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-length", type=int, default=4096)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--micro-batches", type=int, default=60)
    p.add_argument("--compute-ms", type=float, nargs="+", default=[0, 20, 50])
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "megatron_ixt_bench"))
    args = p.parse_args()
    torch.set_num_threads(1)
    cpu_compat.activate()
    torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:29531", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    corpus = build_corpus(Path(args.cache))
    tokenizer = build_tokenizer("SentencePieceTokenizer", tokenizer_model=corpus["tokenizer"])
    samples = (args.micro_batches + 1) * args.micro_batch_size
    with tempfile.TemporaryDirectory() as cache:
        dataset = build_real(IXTDataset, IXTDatasetConfig, corpus["ixt"], tokenizer, args.seq_length, samples, cache, True)
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; IXT dataset, micro-batch "
              f"{args.micro_batch_size} x {args.seq_length} tokens, {args.micro_batches} micro-batches per run")
        print(f"{'compute/micro-batch':>20} {'workers':>8} {'wait median':>12} {'wait p95':>9} {'share of step':>14}")
        for compute in args.compute_ms:
            for workers in (0, 2):
                cfg, _ = parse_config(["--config", str(REPO / "examples/configs/tiny.yaml"), "--mock-data",
                                       "--seq-length", str(args.seq_length), "--micro-batch-size",
                                       str(args.micro_batch_size), "--num-workers", str(workers)])
                w = waits(cfg, dataset, compute, args.micro_batches)
                median, p95 = statistics.median(w), statistics.quantiles(w, n=20)[-1]
                share = statistics.mean(w) / (statistics.mean(w) + compute) if compute or statistics.mean(w) else 0
                print(f"{compute:>17.0f} ms {workers:>8} {median:>9.2f} ms {p95:>6.2f} ms {100 * share:>13.1f}%", flush=True)
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
