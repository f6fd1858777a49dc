"""Console logging: rank 0 reports setup, the last rank reports losses (it holds them, as in
Megatron-LM); other ranks print warnings and errors only."""

from __future__ import annotations

import logging
import os
import sys
import warnings


def setup_logging() -> None:
    # torchrun sets RANK/WORLD_SIZE; a process started directly by srun has SLURM's.
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    level = logging.INFO if rank in (0, world - 1) else logging.WARNING
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"[%(asctime)s rank {rank}] %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # megatron-core announces each missing optional kernel package (Transformer Engine, Apex)
    # at import, once per module; one line in the run's header says the same (the kernel
    # plan, see pretrain_ixt.py). Only these announcements are silenced: any other warning,
    # e.g. a "falling back" at run time, is shown.
    for message in (r"Transformer Engine and Apex are not installed\. Falling back to (Torch optimizers|local "
                    r"implementations of multi_tensor_)",
                    r"Apex is not installed\. Falling back to Torch Norm"):
        warnings.filterwarnings("ignore", message=message, category=UserWarning, module=r"megatron\.core")
    for noisy in ("megatron.core", "torch.distributed"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
