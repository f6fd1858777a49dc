"""Samples/s of the IXT dataset against megatron-core's GPTDataset on the same files.

    python benchmarks/dataloader.py [--samples 4000] [--seq-length 1024]

Both read the same .bin/.idx (the GPT dataset through a view without the side file), with
the same split, sequence length and document-aware masks; each configuration is timed
over the same number of samples after the index is built (index building is reported
separately: it is a one-off per run, cached on disk).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _corpus import build_corpus  # noqa: E402
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig  # noqa: E402

from megatron_ixt.data.ixt_dataset import IXTDataset, IXTDatasetConfig  # noqa: E402
from megatron_ixt.data.tokenizers import build_tokenizer  # noqa: E402


def build(cls, config_cls, prefix, tokenizer, seq, samples, cache, reset, **ixt):
    config = config_cls(random_seed=1234, sequence_length=seq, blend=([prefix], None), split="100,0,0",
                        path_to_cache=cache, tokenizer=tokenizer, reset_position_ids=reset,
                        reset_attention_mask=reset, eod_mask_loss=False, create_attention_mask=reset, **ixt)
    from megatron.core.datasets.utils import Split
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    low = cls.build_low_level_dataset(prefix, config)
    indices = torch.arange(cls.numel_low_level_dataset(low)).numpy().astype("int32")
    start = time.perf_counter()
    ds = cls(low, prefix, indices, samples, Split.train, config)
    return ds, time.perf_counter() - start


def rate(ds, samples: int, batch: int) -> float:
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=0)
    n, start = 0, time.perf_counter()
    for b in loader:
        n += b["tokens"].shape[0]
        if n >= samples:
            break
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--seq-length", type=int, default=1024)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "megatron_ixt_bench"))
    parser.add_argument("--repeats", type=int, default=3, help="best of N timings per configuration")
    args = parser.parse_args()
    # One thread, as in a DataLoader worker; also keeps timings stable on a shared machine.
    torch.set_num_threads(1)
    corpus = build_corpus(Path(args.cache))
    tokenizer = build_tokenizer("SentencePieceTokenizer", tokenizer_model=corpus["tokenizer"])
    print(f"{args.samples} samples of {args.seq_length} tokens, micro-batch {args.micro_batch_size}, best of {args.repeats}")
    print(f"{'dataset':34} {'index build s':>13} {'samples/s':>10} {'vs GPT':>7}")
    for reset in (False, True):
        runs = [("GPTDataset", GPTDataset, GPTDatasetConfig, corpus["plain"], {}),
                ("IXTDataset", IXTDataset, IXTDatasetConfig, corpus["ixt"], {"ixt_feedback_dropout": 0.1}),
                ("IXTDataset --ixt-repeat-prefix", IXTDataset, IXTDatasetConfig, corpus["ixt"],
                 {"ixt_feedback_dropout": 0.1, "ixt_repeat_prefix": True})]
        base = None
        for name, cls, config_cls, prefix, ixt in runs:
            with tempfile.TemporaryDirectory() as cache:
                ds, build_s = build(cls, config_cls, prefix, tokenizer, args.seq_length, args.samples, cache, reset, **ixt)
                best = max(rate(ds, args.samples, args.micro_batch_size) for _ in range(args.repeats))
            base = base or best
            label = f"{name}{' +reset masks' if reset else ''}"
            print(f"{label:34} {build_s:>13.2f} {best:>10.0f} {100 * best / base:>6.0f}%", flush=True)


if __name__ == "__main__":
    main()
