"""Process-group initialisation from torchrun's or SLURM's environment, and the parallel
layout. This module is the one place that creates megatron-core's process groups."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import random
import re
from typing import Any, Optional

import numpy as np
import torch

from megatron_ixt.runtime.kernels import KernelPlan, apply_environment

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
        # No MASTER_PORT: initialize_distributed binds the store to a port the kernel picks.
    env.setdefault("LOCAL_RANK", "0")
    return {"source": source, "rank": int(env["RANK"]), "world_size": int(env["WORLD_SIZE"]),
            "local_rank": int(env["LOCAL_RANK"])}


@dataclasses.dataclass(frozen=True)
class ParallelLayout:
    """The run's parallel layout and this rank's place in it: built once, after megatron-core
    creates its process groups (:meth:`from_megatron`), and passed to the modules that need
    it (loop, step, loader, checkpoints, inference) instead of each asking megatron-core's
    ``parallel_state`` again; the role of torchtitan's ``ParallelDims``. megatron-core keeps
    owning the groups (its schedules, DDP and layers read them themselves); this object only
    holds what it handed out.

    megatron-core orders ranks ``tp-cp-ep-dp-pp``: TP varies fastest (keep it inside a node),
    PP slowest. Built by hand (``--dry-run``'s table, tests), it describes the sizes only:
    the rank fields are 0 and there are no groups."""

    world_size: int
    tp: int
    pp: int
    vpp: Optional[int] = None  # model chunks per pipeline rank (interleaved schedule), else None
    cp: int = 1
    # This rank's coordinates and the groups our own code uses (the TP group for the loader's
    # broadcast, DP (with its CP ranks) for the reported losses, PP for inference results).
    rank: int = 0
    tp_rank: int = 0
    pp_rank: int = 0
    dp_rank: int = 0
    cp_rank: int = 0
    tp_group: Any = dataclasses.field(default=None, compare=False, repr=False)
    dp_group: Any = dataclasses.field(default=None, compare=False, repr=False)
    pp_group: Any = dataclasses.field(default=None, compare=False, repr=False)
    tp_src_rank: int = 0  # global rank of TP rank 0 in this rank's TP group
    pp_last_rank: int = 0  # global rank of the last stage in this rank's PP group

    @classmethod
    def from_megatron(cls) -> "ParallelLayout":
        """This rank's layout as megatron-core's ``initialize_model_parallel`` set it up."""
        from megatron.core import parallel_state as ps

        layout = cls(
            world_size=torch.distributed.get_world_size(),
            tp=ps.get_tensor_model_parallel_world_size(),
            pp=ps.get_pipeline_model_parallel_world_size(),
            vpp=ps.get_virtual_pipeline_model_parallel_world_size(),
            cp=ps.get_context_parallel_world_size(),
            rank=torch.distributed.get_rank(),
            tp_rank=ps.get_tensor_model_parallel_rank(),
            pp_rank=ps.get_pipeline_model_parallel_rank(),
            dp_rank=ps.get_data_parallel_rank(),
            cp_rank=ps.get_context_parallel_rank(),
            tp_group=ps.get_tensor_model_parallel_group(),
            # The losses of a global batch are summed over its data-parallel replicas and, under
            # context parallelism, over the CP ranks that each hold part of every sequence.
            dp_group=ps.get_data_parallel_group(with_context_parallel=True),
            pp_group=ps.get_pipeline_model_parallel_group(),
            tp_src_rank=ps.get_tensor_model_parallel_src_rank(),
            pp_last_rank=ps.get_pipeline_model_parallel_last_rank(),
        )
        if layout.dp != ps.get_data_parallel_world_size():  # e.g. expert parallelism, which we do not set up
            raise RuntimeError(f"megatron-core's data-parallel size {ps.get_data_parallel_world_size()} is not "
                               f"world / (TP x CP x PP) = {layout.dp}")
        return layout

    @property
    def dp(self) -> int:
        return self.world_size // (self.tp * self.cp * self.pp)

    @property
    def num_chunks(self) -> int:
        """Model chunks on each rank: one per virtual pipeline stage, one without interleaving."""
        return self.vpp or 1

    def is_first_stage(self, vp_stage: Optional[int] = None) -> bool:
        """This rank holds the first pipeline stage; with ``vp_stage`` (interleaved schedule),
        that model chunk is the first of the whole pipeline. megatron-core's
        ``is_pipeline_first_stage(ignore_virtual=vp_stage is None, vp_stage)``."""
        if vp_stage is not None and self.vpp is not None and vp_stage != 0:
            return False
        return self.pp_rank == 0

    def is_last_stage(self, vp_stage: Optional[int] = None) -> bool:
        """As :meth:`is_first_stage`, for the last stage."""
        if vp_stage is not None and self.vpp is not None and vp_stage != self.vpp - 1:
            return False
        return self.pp_rank == self.pp - 1

    def num_microbatches(self, global_batch_size: int, micro_batch_size: int) -> int:
        """Micro-batches per DP rank and global batch."""
        return global_batch_size // (micro_batch_size * self.dp)

    def checkpoint_record(self) -> dict:
        """The layout as a checkpoint records it (``common.pt``'s ``layout``)."""
        return {"tensor_model_parallel_size": self.tp, "pipeline_model_parallel_size": self.pp,
                "data_parallel_size": self.dp}

    def rank_grid(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """(sizes, this rank's offsets) over (PP, TP, DP): where per-rank state (the RNG
        states) sits in a checkpoint."""
        return (self.pp, self.tp, self.dp), (self.pp_rank, self.tp_rank, self.dp_rank)

    def coordinates(self, rank: int) -> dict:
        tp_rank = rank % self.tp
        cp_rank = (rank // self.tp) % self.cp
        dp_rank = (rank // (self.tp * self.cp)) % self.dp
        pp_rank = rank // (self.tp * self.cp * self.dp)
        return {"rank": rank, "tp": tp_rank, "cp": cp_rank, "pp": pp_rank, "dp": dp_rank}

    def table(self) -> str:
        lines = [f"parallel layout: world {self.world_size} = TP {self.tp} x PP {self.pp} x DP {self.dp}"
                 + (f" x CP {self.cp}" if self.cp > 1 else "")
                 + (f" (virtual pipeline stages per rank: {self.vpp})" if self.vpp else "")]
        for r in range(self.world_size):
            c = self.coordinates(r)
            lines.append(f"  rank {r:4d}: tp {c['tp']} pp {c['pp']} dp {c['dp']}" + (f" cp {c['cp']}" if self.cp > 1 else ""))
        return "\n".join(lines)


def virtual_pipeline_size(cfg) -> Optional[int]:
    """Model chunks per pipeline rank under the interleaved schedule (None without it)."""
    p = cfg.parallel
    if not p.num_layers_per_virtual_pipeline_stage:
        return None
    return cfg.model.num_layers // p.pipeline_model_parallel_size // p.num_layers_per_virtual_pipeline_stage


def seed_everything(seed: int, pipeline_rank: int = 0) -> None:
    """Python, NumPy and torch seeds, then megatron-core's model-parallel RNG streams
    (needs the process groups: the TP stream differs per TP rank).

    As in Megatron-LM, each pipeline stage draws from its own streams (seed + 100 x stage),
    so stages do not share dropout masks. Initial weights do not depend on these streams:
    ``megatron_ixt.model.init`` draws them per parameter, the same at every layout."""
    from megatron.core import tensor_parallel

    seed = seed + 100 * pipeline_rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


_bound_port: Optional[str] = None  # the MASTER_PORT this process set for itself (below)


def initialize_distributed(cfg, plan: KernelPlan) -> ParallelLayout:
    """Create the default process group and megatron-core's model-parallel groups; returns
    this rank's :class:`ParallelLayout`, the one the rest of the run is given.

    ``plan`` is the run's kernel plan (``runtime.kernels.validate_for_this_machine``): on
    CUDA, NCCL, one device per local rank, plain megatron-core; on CPU, gloo and the CPU
    compatibility layer (``megatron_ixt.runtime.cpu_compat``)."""
    from megatron.core import parallel_state

    launch = resolve_launch_env()
    apply_environment(plan)  # before the first CUDA call
    backend = plan.backend
    if plan.device == "cuda":
        torch.cuda.set_device(launch["local_rank"] % torch.cuda.device_count())
    if plan.cpu_compat:
        from megatron_ixt.runtime import cpu_compat

        cpu_compat.activate()
    if not torch.distributed.is_initialized():
        timeout = datetime.timedelta(minutes=cfg.parallel.distributed_timeout_minutes)
        store = None
        global _bound_port
        if launch["world_size"] == 1 and os.environ.get("MASTER_PORT") in (None, _bound_port):
            # One process that no launcher gave a port binds its store to port 0 and learns
            # the port afterwards: a port found free and bound later can be taken in between
            # (runs started side by side, whose gloo connections take ephemeral ports, collided so).
            # A second initialisation in the same process (import, then export) binds anew.
            store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], 0, 1, is_master=True, timeout=timeout)
            os.environ["MASTER_PORT"] = _bound_port = str(store.port)
        torch.distributed.init_process_group(
            backend=backend,
            world_size=launch["world_size"],
            rank=launch["rank"],
            timeout=timeout,
            store=store,
        )
    p = cfg.parallel
    vpp = virtual_pipeline_size(cfg)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=vpp,
        context_parallel_size=p.context_parallel_size,
        distributed_timeout_minutes=p.distributed_timeout_minutes,
    )
    layout = ParallelLayout.from_megatron()
    seed_everything(cfg.training.seed, layout.pp_rank)
    logger.info("initialised %s (%s launch, backend %s)", layout.table().splitlines()[0], launch["source"], backend)
    return layout


def destroy_distributed() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
