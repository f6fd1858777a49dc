"""Feeds the micro-batch stream (megatron_ixt/data/loader.py) of a real IXT dataset through
several parallel layouts on one torchrun world and records, per rank and layout, what it
loaded and what each model chunk received (test helper for tests/test_loader.py).

For each layout: model-parallel groups are re-created, the stream is read the way the
schedule reads it (every chunk pulls every micro-batch; the interleaved schedule runs chunk
0 ahead of chunk 1), and every batch received is checked against the dataset indexed
directly with the sampler's indices. The same stream is then read again with DataLoader
workers, which must give identical tensors. Rank r writes OUT/rank{r}.json.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from megatron.core import parallel_state

from megatron_ixt.config import parse_config
from megatron_ixt.data.datasets import build_datasets
from megatron_ixt.data.loader import PretrainingSampler, training_stream, validation_stream
from megatron_ixt.tokenizers.build import build_tokenizer
from megatron_ixt.runtime import cpu_compat
from megatron_ixt.runtime.distributed import ParallelLayout

LAYOUTS = {  # name -> (tp, pp, vpp, document masks)
    "tp2_pp2": (2, 2, None, "none"),
    "pp4": (1, 4, None, "none"),
    "pp4_documents": (1, 4, None, "ids"),
    "pp2_interleaved": (1, 2, 2, "none"),
    "tp2_dp2": (2, 1, None, "none"),
}
STEPS, MICRO = 3, 2  # global batches read per layout, micro-batches per global batch and DP rank


class Counting(torch.utils.data.Dataset):
    """The dataset, counting the samples this process reads."""

    def __init__(self, dataset):
        self.dataset, self.reads = dataset, 0
        self.datasets = [dataset]  # looks like a blend: data/batch.py reads the fields from the part

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, idx):
        self.reads += 1
        return self.dataset[idx]


def read(stream, num_chunks):
    """What each chunk receives over STEPS global batches, read in schedule order."""
    received = [[] for _ in range(num_chunks)]
    its = stream.iterators() if num_chunks > 1 else [stream.iterators()]
    for _ in range(STEPS):
        for chunk, it in enumerate(its):  # chunk 0 runs all its forwards before chunk 1
            received[chunk].extend(next(it) for _ in range(MICRO))
    return received


def layout_mismatches(layout: ParallelLayout) -> list[str]:
    """Where the layout differs from what megatron-core's parallel_state answers itself."""
    ps = parallel_state
    want = {"tp": ps.get_tensor_model_parallel_world_size(), "pp": ps.get_pipeline_model_parallel_world_size(),
            "dp": ps.get_data_parallel_world_size(), "vpp": ps.get_virtual_pipeline_model_parallel_world_size(),
            "tp_rank": ps.get_tensor_model_parallel_rank(), "pp_rank": ps.get_pipeline_model_parallel_rank(),
            "dp_rank": ps.get_data_parallel_rank(), "tp_src_rank": ps.get_tensor_model_parallel_src_rank(),
            "pp_last_rank": ps.get_pipeline_model_parallel_last_rank()}
    diffs = [f"{k}: {getattr(layout, k)} != {v}" for k, v in want.items() if getattr(layout, k) != v]
    for name, group in (("tp_group", ps.get_tensor_model_parallel_group()),
                        ("dp_group", ps.get_data_parallel_group(with_context_parallel=True)),
                        ("pp_group", ps.get_pipeline_model_parallel_group())):
        if getattr(layout, name) is not group:
            diffs.append(f"{name} is not megatron-core's")
    for k in range(layout.num_chunks):
        stage = k if layout.vpp else None
        for mine, theirs in ((layout.is_first_stage, ps.is_pipeline_first_stage),
                             (layout.is_last_stage, ps.is_pipeline_last_stage)):
            if mine(stage) != theirs(ignore_virtual=stage is None, vp_stage=stage):
                diffs.append(f"{mine.__name__}({stage})")
    expected = {"rank": layout.rank, "tp": layout.tp_rank, "cp": ps.get_context_parallel_rank(), "pp": layout.pp_rank,
                "dp": layout.dp_rank}
    if layout.coordinates(layout.rank) != expected:
        diffs.append(f"coordinates({layout.rank}) = {layout.coordinates(layout.rank)}, megatron-core {expected}")
    return diffs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data-prefix", required=True)
    p.add_argument("--tokenizer-model", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    cpu_compat.activate()
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    results = {}
    for name, (tp, pp, vpp, masks) in LAYOUTS.items():
        cfg, _ = parse_config(["--config", "examples/configs/tiny.yaml", "--data-path", args.data_prefix,
                               "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
                               args.tokenizer_model, "--tensor-model-parallel-size", str(tp),
                               "--pipeline-model-parallel-size", str(pp), "--split", "90,10,0",
                               "--num-workers", "0", "--train-iters", str(STEPS), "--eval-interval", "1",
                               "--global-batch-size", str(MICRO * 2 * 4 // (tp * pp))]
                              + (["--num-layers-per-virtual-pipeline-stage", "1", "--num-layers", "4"] if vpp else []))
        parallel_state.initialize_model_parallel(tp, pp, virtual_pipeline_model_parallel_size=vpp)
        layout = ParallelLayout.from_megatron()
        tokenizer = build_tokenizer("SentencePieceTokenizer", tokenizer_model=args.tokenizer_model)
        train, valid, _ = build_datasets(cfg, tokenizer)
        dataset = Counting(train)
        stream = training_stream(cfg, layout, dataset, 0, masks)
        received = read(stream, vpp or 1)

        dp_rank, dp = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
        expected = list(PretrainingSampler(len(train), 0, cfg.training.micro_batch_size, dp_rank, dp))
        mismatches, fields = 0, []
        for chunk_batches in received:
            fields.append(sorted(chunk_batches[0].present()) if chunk_batches[0] is not None else [])
            for k, batch in enumerate(chunk_batches):
                if batch is None:
                    continue
                samples = [train[i] for i in expected[k]]
                for f in batch.present():
                    want = torch.stack([s[f] for s in samples]).to(getattr(batch, f).dtype)
                    mismatches += int(not torch.equal(getattr(batch, f), want))

        # The same stream with two DataLoader worker processes, and the validation stream.
        cfg.data.num_workers = 2
        workers_stream = training_stream(cfg, layout, train, 0, masks)
        with_workers = read(workers_stream, vpp or 1)
        differ_with_workers = sum(
            int((a is None) != (b is None) or (a is not None and any(
                not torch.equal(getattr(a, f), getattr(b, f)) for f in a.present())))
            for ca, cb in zip(received, with_workers) for a, b in zip(ca, cb))
        valid_stream = validation_stream(cfg, layout, valid, 0, masks)
        valid_fields = [sorted(b.present()) if b is not None else [] for b in
                        [next(it) for it in (valid_stream.iterators() if vpp else [valid_stream.iterators()])]]
        results[name] = {
            "tp_rank": parallel_state.get_tensor_model_parallel_rank(),
            "pp_rank": parallel_state.get_pipeline_model_parallel_rank(),
            "dp_rank": dp_rank, "opened_loader": stream.source is not None, "samples_read": dataset.reads,
            "fields": fields, "valid_fields": valid_fields, "batches": sum(b is not None for c in received for b in c),
            "mismatches": mismatches, "differ_with_workers": differ_with_workers,
            "layout_mismatches": layout_mismatches(layout),
        }
        for s in (stream, workers_stream, valid_stream):
            s.close()
        parallel_state.destroy_model_parallel()
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(results, indent=1))
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
