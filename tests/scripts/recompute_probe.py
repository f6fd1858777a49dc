"""Activation recomputation on the tiny model, in one process (test helper of
tests/training/test_recompute.py): for each setting, the loss and gradients of one fixed
micro-batch, and the bytes autograd saves for the backward pass (counted with
``torch.autograd.graph.saved_tensors_hooks``: what recomputation exists to reduce).

    python tests/scripts/recompute_probe.py OUT.json
"""

import json
import sys

import torch

from megatron_ixt.config.cli import parse_config
from megatron_ixt.model.gpt import build_model_chunks
from megatron_ixt.runtime.distributed import destroy_distributed, initialize_distributed
from megatron_ixt.runtime.kernels import kernel_plan

SETTINGS = {
    "none": [],
    "selective": ["--recompute-granularity", "selective"],
    "full-uniform": ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"],
    "full-block": ["--recompute-granularity", "full", "--recompute-method", "block", "--recompute-num-layers", "2"],
}


def main() -> None:
    results, layout = {}, None
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 500, (2, 64), generator=generator)
    labels = torch.roll(tokens, -1, dims=1)
    positions = torch.arange(64).unsqueeze(0).expand(2, -1)
    for name, flags in SETTINGS.items():
        cfg, _ = parse_config(["--config", "examples/configs/tiny.yaml", "--mock-data", "--vocab-size", "500",
                               "--seq-length", "64", "--hidden-dropout", "0.1", *flags])
        plan = kernel_plan(cfg)
        if layout is None:
            layout = initialize_distributed(cfg, plan)
        torch.manual_seed(1)  # the same dropout masks in every setting (recomputation replays them)
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(1)
        [model] = build_model_chunks(cfg, layout, plan, 500)
        saved = [0]

        def pack(t):
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(tokens, positions, None, labels=labels).float().mean()
        loss.backward()
        grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
        results[name] = {"loss": loss.item(), "grad_norm": grads.norm().item(), "saved_bytes": saved[0],
                         "grads": grads[:2000].tolist()}
    destroy_distributed()
    with open(sys.argv[1], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
