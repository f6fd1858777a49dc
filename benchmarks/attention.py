"""Core attention: the torch attention against megatron-core's unfused DotProductAttention.

Forward + backward time and peak memory of one attention call at a training shape
(default b=2, 8 query heads in 4 groups, head dim 64, s=2048), causal and with document
masks. Each variant runs in a fresh process, so its peak resident memory (ru_maxrss, minus
the same process's peak before the call) is its own.

    python benchmarks/attention.py                      # CPU, s=2048
    python benchmarks/attention.py --seq-length 4096 --repeats 3

The model-level comparison is a training step: ``benchmarks/train_step.py --extra
--seq-length 2048 --attention-backend local`` against ``--attention-backend torch``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "unfused, causal": ("local", False),
    "torch SDPA, causal": ("torch", False),
    "unfused, document mask": ("local", True),
    "torch SDPA, document ids": ("torch", True),
}


def measure(backend: str, documents: bool, b: int, heads: int, groups: int, dim: int, s: int, repeats: int) -> dict:
    """Runs inside the child process."""
    import datetime

    import torch
    from megatron.core import parallel_state
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_ixt.model.attention import TorchCoreAttention, document_ids
    from megatron_ixt.runtime import cpu_compat
    from megatron_ixt.runtime.distributed import seed_everything

    torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1,
                                         timeout=datetime.timedelta(minutes=5))
    cpu_compat.activate()
    parallel_state.initialize_model_parallel(1, 1)
    seed_everything(0)
    config = TransformerConfig(num_layers=1, hidden_size=heads * dim, num_attention_heads=heads, num_query_groups=groups,
                               kv_channels=dim, attention_dropout=0.0, use_cpu_initialization=True,
                               masked_softmax_fusion=False)
    tokens = torch.randint(1, 1000, (b, s))
    tokens[:, torch.arange(s // 8, s, s // 8)] = 0  # eight documents per sample
    ids = document_ids(tokens, 0)
    if backend == "local":
        module = DotProductAttention(config, 1, AttnMaskType.padding if documents else AttnMaskType.causal, "self")
        mask = (~((ids.unsqueeze(2) == ids.unsqueeze(1)) & torch.ones(s, s, dtype=torch.bool).tril())).unsqueeze(1) \
            if documents else None
    else:
        module = TorchCoreAttention(config, 1, AttnMaskType.causal, "self")
        mask = ids if documents else None
    q = torch.randn(s, b, heads, dim, requires_grad=True)
    k = torch.randn(s, b, groups, dim, requires_grad=True)
    v = torch.randn(s, b, groups, dim, requires_grad=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        module(q, k, v, mask).sum().backward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ms": 1000 * statistics.median(times[1:]), "peak_mib": (peak - before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.batch, args.heads, args.groups, args.head_dim, args.seq_length, args.repeats)
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1] == "1", *shape)))
        return
    scores_mib = args.batch * args.heads * args.seq_length ** 2 * 4 / 2**20
    print(f"core attention forward+backward, b={args.batch}, {args.heads} heads / {args.groups} groups, "
          f"head dim {args.head_dim}, s={args.seq_length}, fp32, CPU, {os.cpu_count()} cores; median of "
          f"{args.repeats} after one warm-up; one fp32 [b, heads, s, s] tensor is {scores_mib:.0f} MiB")
    print(f"{'variant':28} {'ms':>9} {'peak MiB':>10}")
    results = {}
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for name, (backend, documents) in VARIANTS.items():
        out = subprocess.run([sys.executable, __file__, "--child", backend, str(int(documents)),
                              "--seq-length", str(args.seq_length), "--batch", str(args.batch), "--heads", str(args.heads),
                              "--groups", str(args.groups), "--head-dim", str(args.head_dim), "--repeats", str(args.repeats)],
                             capture_output=True, text=True, env=env)
        if out.returncode:
            raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results[name] = r
        print(f"{name:28} {r['ms']:>9.1f} {r['peak_mib']:>10.0f}", flush=True)
    for kind in ("causal", "document"):
        unfused = next(r for n, r in results.items() if n.startswith("unfused") and kind in n)
        torch_ = next(r for n, r in results.items() if n.startswith("torch") and kind in n)
        print(f"{kind}: torch attention {unfused['ms'] / torch_['ms']:.2f}x faster, "
              f"{unfused['peak_mib'] / max(torch_['peak_mib'], 1):.1f}x less peak memory than unfused")


if __name__ == "__main__":
    main()
