"""The IXT dataset against megatron-core's GPTDataset: index-build time and samples/s.

    python benchmarks/dataloader.py                      # both parts
    python benchmarks/dataloader.py --index-docs 1e6 1e7 --skip-samples
    python benchmarks/dataloader.py --skip-index --samples 3000 --rounds 5

Index build (what rank 0 does before training while the other ranks wait): synthetic
per-sequence arrays of 1M, 10M and 100M documents (lengths 20..1000 tokens, 70% with a
8..40-token prefix), `num_samples` covering 95% of one epoch; each configuration builds
its document, sample and shuffle indices into a fresh cache folder (the `.npy` writes
included, as in a run): GPTDataset, then the IXT dataset plain, with prefix dropout, with
`--ixt-repeat-prefix`, and with both, interleaved `--index-rounds` times (medians). numba's compilation is paid once per
installation and is timed separately.

Samples/s: both datasets read the same real `.bin/.idx` (benchmarks/_corpus.py; the GPT
dataset through a view without the side file), through a `DataLoader` (micro-batch 4, no
workers, one thread) as the training loop reads them, without an [s, s] attention mask
(the training step derives document boundaries on the device). The configurations run
interleaved, `--rounds` times, so that the machine's other load hits each alike; the
figures are medians over rounds, and "vs GPT" is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _corpus import build_corpus  # noqa: E402
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig  # noqa: E402
from megatron.core.datasets.utils import Split  # noqa: E402

from megatron_ixt.data.ixt_dataset import IXTDataset, IXTDatasetConfig  # noqa: E402
from megatron_ixt.tokenizers.build import build_tokenizer  # noqa: E402

IXT_VARIANTS = [
    ("IXTDataset", {}),
    ("IXTDataset dropout 0.1", {"ixt_feedback_dropout": 0.1}),
    ("IXTDataset --ixt-repeat-prefix", {"ixt_repeat_prefix": True}),
    ("IXTDataset --ixt-repeat-prefix, dropout 0.1", {"ixt_repeat_prefix": True, "ixt_feedback_dropout": 0.1}),
]


# -- index build ---------------------------------------------------------------------------


class SyntheticSequences:
    """What both datasets read of a low-level dataset to build their indices."""

    def __init__(self, num_docs: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.sequence_lengths = rng.integers(20, 1001, num_docs, dtype=np.int32)
        self.prefix_lengths = np.where(rng.random(num_docs, dtype=np.float32) < 0.7,
                                       rng.integers(8, 41, num_docs, dtype=np.int32), 0).astype(np.int32)
        self.levels = np.zeros(0, dtype=np.int32)  # never read while building indices
        self.path_prefix = f"synthetic-{num_docs}"

    def __len__(self) -> int:
        return len(self.sequence_lengths)


def build_once(cls, config_cls, low, num_samples: int, seq: int, tokenizer, **ixt) -> tuple[float, float, int]:
    """Wall and CPU seconds to construct the dataset (= build and save its indices), and its
    sample count. CPU time (this process: the build is single-threaded) is the steadier figure
    on a machine shared with other work."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_CACHE_DIR")) as cache:
        config = config_cls(random_seed=1234, sequence_length=seq, blend=([low.path_prefix], None), split="100,0,0",
                            path_to_cache=cache, tokenizer=tokenizer, reset_position_ids=False,
                            reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False, **ixt)
        indices = np.arange(len(low), dtype=np.int32)
        start, cpu = time.perf_counter(), time.process_time()
        ds = cls(low, low.path_prefix, indices, num_samples, Split.train, config)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        n = len(ds)
        del ds, indices
        gc.collect()
    return seconds, cpu, n


def index_builds(sizes: list[int], seq: int, tokenizer, rounds: int, kernels_only: bool = False) -> None:
    t0 = time.perf_counter()
    build_once(IXTDataset, IXTDatasetConfig, SyntheticSequences(1000), 10, seq, tokenizer,
               ixt_repeat_prefix=True, ixt_feedback_dropout=0.1)
    print(f"(first IXT build incl. numba compile or cache load: {time.perf_counter() - t0:.2f} s)")
    print(f"{'documents':>11}  {'dataset':44} {'wall s':>8} {'CPU s':>8} {'CPU vs GPT':>10} {'samples':>11}   "
          f"(median of {rounds} interleaved rounds; vs GPT: median of the per-round CPU-time ratios)")
    runs = [("GPTDataset", GPTDataset, GPTDatasetConfig, {})]
    runs += [(name, IXTDataset, IXTDatasetConfig, ixt) for name, ixt in IXT_VARIANTS]
    for num_docs in sizes:
        low = SyntheticSequences(num_docs)
        num_samples = int(0.95 * int(low.sequence_lengths.sum(dtype=np.int64)) / seq)
        times: dict = {name: [] for name, *_ in runs}
        cpus: dict = {name: [] for name, *_ in runs}
        counts = {}
        for _ in range(0 if kernels_only else rounds):
            for name, cls, config_cls, ixt in runs:
                seconds, cpu, counts[name] = build_once(cls, config_cls, low, num_samples, seq, tokenizer, **ixt)
                times[name].append(seconds)
                cpus[name].append(cpu)
                if rounds == 1:
                    print(f"{num_docs:>11,}  {name:44} {seconds:>8.2f} {cpu:>8.2f} "
                          f"{cpu / cpus['GPTDataset'][0]:>9.2f}x {counts[name]:>11,}", flush=True)
        for name, *_ in (runs if not kernels_only and rounds > 1 else []):
            ratio = statistics.median(t / g for t, g in zip(cpus[name], cpus["GPTDataset"]))
            print(f"{num_docs:>11,}  {name:44} {statistics.median(times[name]):>8.2f} "
                  f"{statistics.median(cpus[name]):>8.2f} {ratio:>9.2f}x {counts[name]:>11,}", flush=True)
        kernels(low, seq, rounds)
        del low
        gc.collect()


def kernels(low: SyntheticSequences, seq: int, rounds: int) -> None:
    """The packers alone on one shuffled epoch: megatron-core's C++ `build_sample_idx` (over
    per-occurrence sizes, as GPTDataset calls it) against packing.pack with re-inserted
    prefixes (reading sizes and prefixes through the occurrence index)."""
    from megatron.core.datasets import helpers

    from megatron_ixt.data import packing

    n = len(low)
    occurrences = np.random.default_rng(0).permutation(n).astype(np.int32)
    dropped = np.zeros(n, dtype=bool)
    tokens = int(low.sequence_lengths.sum(dtype=np.int64))  # both are given the epoch's token count
    cpp, ours = [], []
    for _ in range(max(rounds, 3)):
        start = time.process_time()
        helpers.build_sample_idx(low.sequence_lengths, occurrences, seq, 1, tokens, True, True)
        cpp.append(time.process_time() - start)
        start = time.process_time()
        packing.pack(occurrences, low.sequence_lengths, low.prefix_lengths, dropped, seq, 1, repeat_prefix=True,
                     total_tokens=tokens)
        ours.append(time.process_time() - start)
    c, o = statistics.median(cpp), statistics.median(ours)
    print(f"{n:>11,}  packer alone (CPU s, median of {len(cpp)}): helpers.build_sample_idx {c:.2f} s ({n / c / 1e6:.1f}M docs/s), "
          f"packing.pack --ixt-repeat-prefix {o:.2f} s ({n / o / 1e6:.1f}M docs/s): {c / o:.2f}x its speed", flush=True)


# -- samples/s -----------------------------------------------------------------------------


def build_real(cls, config_cls, prefix, tokenizer, seq, samples, cache, reset, **ixt):
    config = config_cls(random_seed=1234, sequence_length=seq, blend=([prefix], None), split="100,0,0",
                        path_to_cache=cache, tokenizer=tokenizer, reset_position_ids=reset,
                        reset_attention_mask=reset, eod_mask_loss=False, create_attention_mask=False, **ixt)
    low = cls.build_low_level_dataset(prefix, config)
    indices = np.arange(cls.numel_low_level_dataset(low), dtype=np.int32)
    return cls(low, prefix, indices, samples, Split.train, config)


def rate(ds, samples: int, batch: int) -> float:
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=0)
    n, start = 0, time.perf_counter()
    for b in loader:
        n += b["tokens"].shape[0]
        if n >= samples:
            break
    return n / (time.perf_counter() - start)


def samples_per_second(args, tokenizer, corpus) -> None:
    print(f"\n{args.samples} samples of {args.seq_length} tokens, micro-batch {args.micro_batch_size}, "
          f"{args.rounds} interleaved rounds (medians)")
    print(f"{'dataset':52} {'samples/s':>10} {'vs GPT':>7}")
    for reset in (False, True):
        runs = [("GPTDataset", GPTDataset, GPTDatasetConfig, corpus["plain"], {})]
        runs += [(name, IXTDataset, IXTDatasetConfig, corpus["ixt"], ixt) for name, ixt in IXT_VARIANTS]
        with tempfile.TemporaryDirectory() as cache:
            datasets = [(name, build_real(cls, ccls, prefix, tokenizer, args.seq_length, args.samples, cache, reset, **ixt))
                        for name, cls, ccls, prefix, ixt in runs]
            rates = {name: [] for name, _ in datasets}
            for _ in range(args.rounds):
                for name, ds in datasets:
                    rates[name].append(rate(ds, args.samples, args.micro_batch_size))
        gpt = rates["GPTDataset"]
        for name, values in rates.items():
            ratio = statistics.median(v / g for v, g in zip(values, gpt))
            label = f"{name}{' +reset position ids' if reset else ''}"
            print(f"{label:52} {statistics.median(values):>10.0f} {ratio:>6.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index-docs", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    parser.add_argument("--index-seq-length", type=int, default=4096)
    parser.add_argument("--index-rounds", type=int, default=3, help="interleaved rounds per size (medians)")
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--kernels-only", action="store_true", help="index part: only the packers, not the datasets")
    parser.add_argument("--skip-samples", action="store_true")
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--seq-length", type=int, default=1024)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "megatron_ixt_bench"))
    args = parser.parse_args()
    # One thread, as in a DataLoader worker; also keeps timings stable on a shared machine.
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if not args.skip_index:
        null = build_tokenizer("NullTokenizer", vocab_size=32000)
        index_builds([int(n) for n in args.index_docs], args.index_seq_length, null, args.index_rounds, args.kernels_only)
    if not args.skip_samples:
        corpus = build_corpus(Path(args.cache))
        tokenizer = build_tokenizer("SentencePieceTokenizer", tokenizer_model=corpus["tokenizer"])
        samples_per_second(args, tokenizer, corpus)


if __name__ == "__main__":
    main()
