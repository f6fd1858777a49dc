"""Process-group initialisation from torchrun's or SLURM's environment, and the parallel
layout. This module is the one place that creates megatron-core's process groups."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import random
import re
import socket
from typing import Optional

import numpy as np
import torch

logger = logging.getLogger(__name__)


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM hostlist: ``gpu[03-05,09],cpu1`` -> ``gpu03``."""
    head = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if head is None:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST {nodelist!r}")
    prefix, _, ranges = head.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_launch_env(environ: Optional[dict] = None) -> dict:
    """Fill ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` for
    ``torch.distributed``: from torchrun when it launched us; from SLURM when ``srun``
    started one task per process directly; else a single local process."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        source = "torchrun"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        source = "slurm"
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault("MASTER_ADDR", first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")))
        # Every task derives the same port from the job id, with no communication.
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    else:
        source = "single"
        env.setdefault("RANK", "0")
        env.setdefault("WORLD_SIZE", "1")
        env.setdefault("LOCAL_RANK", "0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    env.setdefault("LOCAL_RANK", "0")
    return {"source": source, "rank": int(env["RANK"]), "world_size": int(env["WORLD_SIZE"]),
            "local_rank": int(env["LOCAL_RANK"])}


@dataclasses.dataclass(frozen=True)
class ParallelLayout:
    """Which rank holds which (TP, PP, DP) coordinate. megatron-core orders ranks
    ``tp-cp-ep-dp-pp``: TP varies fastest (keep it inside a node), PP slowest."""

    world_size: int
    tp: int
    pp: int
    vpp: Optional[int] = None

    @property
    def dp(self) -> int:
        return self.world_size // (self.tp * self.pp)

    def coordinates(self, rank: int) -> dict:
        tp_rank = rank % self.tp
        dp_rank = (rank // self.tp) % self.dp
        pp_rank = rank // (self.tp * self.dp)
        return {"rank": rank, "tp": tp_rank, "pp": pp_rank, "dp": dp_rank}

    def table(self) -> str:
        lines = [f"parallel layout: world {self.world_size} = TP {self.tp} x PP {self.pp} x DP {self.dp}"
                 + (f" (virtual pipeline stages per rank: {self.vpp})" if self.vpp else "")]
        for r in range(self.world_size):
            c = self.coordinates(r)
            lines.append(f"  rank {r:4d}: tp {c['tp']} pp {c['pp']} dp {c['dp']}")
        return "\n".join(lines)


def virtual_pipeline_size(cfg) -> Optional[int]:
    """Model chunks per pipeline rank under the interleaved schedule (None without it)."""
    p = cfg.parallel
    if not p.num_layers_per_virtual_pipeline_stage:
        return None
    return cfg.model.num_layers // p.pipeline_model_parallel_size // p.num_layers_per_virtual_pipeline_stage


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch seeds, then megatron-core's model-parallel RNG streams
    (needs the process groups: the TP stream differs per TP rank).

    As in Megatron-LM, each pipeline stage draws from its own streams (seed + 100 x stage),
    so stages do not share dropout masks. Initial weights do not depend on these streams:
    ``megatron_ixt.model.init`` draws them per parameter, the same at every layout."""
    from megatron.core import parallel_state, tensor_parallel

    seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def initialize_distributed(cfg) -> ParallelLayout:
    """Create the default process group and megatron-core's model-parallel groups.

    On CUDA: NCCL, one device per local rank, plain megatron-core. On CPU: gloo and the CPU
    compatibility layer (``megatron_ixt.runtime.cpu_compat``)."""
    from megatron.core import parallel_state

    from megatron_ixt.runtime.kernels import apply_environment, kernel_plan

    launch = resolve_launch_env()
    plan = kernel_plan(cfg)
    apply_environment(plan)  # before the first CUDA call
    backend = plan.backend
    if plan.device == "cuda":
        torch.cuda.set_device(launch["local_rank"] % torch.cuda.device_count())
    if plan.cpu_compat:
        from megatron_ixt.runtime import cpu_compat

        cpu_compat.activate()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend=backend,
            world_size=launch["world_size"],
            rank=launch["rank"],
            timeout=datetime.timedelta(minutes=cfg.parallel.distributed_timeout_minutes),
        )
    p = cfg.parallel
    vpp = virtual_pipeline_size(cfg)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=vpp,
        distributed_timeout_minutes=p.distributed_timeout_minutes,
    )
    seed_everything(cfg.training.seed)
    layout = ParallelLayout(launch["world_size"], p.tensor_model_parallel_size, p.pipeline_model_parallel_size, vpp)
    logger.info("initialised %s (%s launch, backend %s)", layout.table().splitlines()[0], launch["source"], backend)
    return layout


def destroy_distributed() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
