"""``pretrain_ixt.py --dry-run``: check a job without running it, on the machine the user is on.

A user checks a GPU job from a CPU login node before submitting it. So the dry run validates
the job for the hardware it will run on, not for this machine: the target's device facts
come from the job's own flags (BF16/FP16, FP8, Transformer Engine layers or kernels, the
distributed optimizer, NCCL or context parallelism mean a CUDA GPU) and from
``--dry-run-device`` (which GPU: its compute capability, for the FP8 recipes). Everything the
configuration alone decides is checked as in a real launch (layout, batch sizes, schedules,
the kernel plan, the data's document start); what only the target machine can provide is
printed as warnings. Then the resolved configuration, the rank layout, the kernel plan and
the theoretical memory per GPU (``model/memory.py``), and exit 0.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional

from megatron_ixt.config.cli import DRY_RUN_DEVICES, ConfigError, config_to_yaml
from megatron_ixt.config.schema import Config
from megatron_ixt.runtime.kernels import FP8_RECIPE_MIN_CAPABILITY, TE_MIN_VERSION_PACKED, DeviceFacts, KernelPlan

logger = logging.getLogger("megatron_ixt")

ASSUMED_TE_VERSION = "2.8.0"
"""The Transformer Engine a GPU target is planned with when this machine has none: the GPU
nodes' image is assumed to ship it (NGC PyTorch containers do), and the dry run says so."""


def needs_cuda(cfg: Config) -> list[str]:
    """The job's flags that only a CUDA GPU runs (empty: it runs on CPU too)."""
    m, p, o = cfg.model, cfg.parallel, cfg.optimizer
    reasons = [flag for flag, on in (
        ("--bf16", m.bf16), ("--fp16", m.fp16), ("--fp8-format", m.fp8_format is not None),
        ("--fp8-param-gather", m.fp8_param_gather),
        ("--transformer-impl transformer_engine", m.transformer_impl == "transformer_engine"),
        (f"--attention-backend {m.attention_backend}", m.attention_backend in ("flash", "fused", "unfused")),
        ("--use-distributed-optimizer", o.use_distributed_optimizer),
        ("--distributed-backend nccl", p.distributed_backend == "nccl"),
        ("--context-parallel-size > 1", p.context_parallel_size > 1),
    ) if on]
    return reasons


@dataclasses.dataclass(frozen=True)
class Target:
    """The machine a dry run checks the job for."""

    facts: DeviceFacts  # the target's (``here`` for a job that runs on this machine)
    here: DeviceFacts  # this machine's
    needs_cuda: tuple  # the job's flags that need a GPU, as given (before validation fills defaults)

    @property
    def simulated(self) -> bool:
        return self.facts is not self.here


def target_device(cfg: Config, device: Optional[str], here: DeviceFacts) -> Target:
    """The machine the job is checked against: this one when it is what the job runs on (a
    CPU job, or this machine has a GPU and no other was named), else a simulated GPU."""
    needs = tuple(needs_cuda(cfg))
    if device is None and (here.cuda or not needs):
        return Target(here, here, needs)
    name, capability = DRY_RUN_DEVICES[device] if device else (None, None)
    if capability is None:
        # Unknown GPU: plan as if it met the job's FP8 recipe; the warning names the requirement.
        capability = FP8_RECIPE_MIN_CAPABILITY.get(cfg.model.fp8_recipe, (8, 0)) if cfg.model.fp8_format else (8, 0)
    facts = DeviceFacts(cuda=True, device_name=name, compute_capability=capability,
                        te_version=here.te_version or ASSUMED_TE_VERSION, apex=here.apex, flex_attention=True)
    return Target(facts, here, needs)


def requirements(cfg: Config, plan: KernelPlan, target: Target, world_size: int) -> list[str]:
    """What the target machine must provide that the dry run could not check here."""
    if not target.simulated:
        return []
    m, p, facts, here = cfg.model, cfg.parallel, target.facts, target.here
    gpus = f"{world_size} CUDA GPUs" + (f" ({facts.device_name})" if facts.device_name else "")
    notes = [f"the job needs {gpus} and NCCL (needed by: {', '.join(target.needs_cuda) or '--dry-run-device'})"]
    if plan.transformer_impl == "transformer_engine" and here.te_version is None:
        uses = [use for use, on in (
            ("--transformer-impl transformer_engine", "--transformer-impl transformer_engine" in target.needs_cuda),
            (f"--attention-backend {m.attention_backend}", m.attention_backend in ("flash", "fused", "unfused")),
            ("--fp8-format", m.fp8_format is not None), ("--fp8-param-gather", m.fp8_param_gather),
            ("--context-parallel-size", p.context_parallel_size > 1),
            (f"packed sequences, Transformer Engine >= {'.'.join(map(str, TE_MIN_VERSION_PACKED))}",
             plan.document_masks == "packed")) if on]
        if uses:
            notes.append(f"the job needs Transformer Engine on the GPU nodes ({', '.join(uses)}); not installed "
                         f"here, planned as {ASSUMED_TE_VERSION}")
        else:
            notes.append("planned with Transformer Engine's layers, as on GPU nodes that have it (NGC PyTorch "
                         "containers do); without it the job runs megatron-core's local layers")
    if plan.fp8_recipe:
        need = FP8_RECIPE_MIN_CAPABILITY[plan.fp8_recipe]
        has = f" ({facts.device_name}: {facts.compute_capability[0]}.{facts.compute_capability[1]})" \
            if facts.device_name else " (pass --dry-run-device to check a GPU)"
        notes.append(f"FP8 recipe {plan.fp8_recipe} needs compute capability >= {need[0]}.{need[1]}{has}")
    if m.bf16:
        notes.append("BF16 needs compute capability >= 8.0 (Ampere or newer)")
    return notes


def report(cfg: Config, plan: KernelPlan, target: Target, world_size: int) -> int:
    """Print the dry run's findings; returns the exit status (0)."""
    from megatron_ixt.model.memory import estimate
    from megatron_ixt.runtime.distributed import ParallelLayout, virtual_pipeline_size
    from megatron_ixt.tokenizers.build import tokenizer_from_config

    from megatron_ixt.data.datasets import data_prefixes
    from megatron_ixt.format.errors import DataError

    for note in requirements(cfg, plan, target, world_size):
        logger.warning("dry run: %s", note)
    # The files the job reads must be there (login nodes see the cluster's file systems).
    for prefix in [] if cfg.data.mock_data else data_prefixes(cfg):
        missing = [prefix + ext for ext in (".bin", ".idx") if not os.path.exists(prefix + ext)]
        if missing:
            raise ConfigError(f"--data-path {prefix}: {' and '.join(missing)} not found")
    try:
        vocab = tokenizer_from_config(cfg.tokenizer).vocab_size
    except (OSError, DataError) as e:
        raise ConfigError(f"--tokenizer-type {cfg.tokenizer.tokenizer_type}: {e}") from e
    padded = cfg.tokenizer.padded_vocab_size(vocab, cfg.parallel.tensor_model_parallel_size)
    print(config_to_yaml(cfg), end="")
    p = cfg.parallel
    print(ParallelLayout(world_size, p.tensor_model_parallel_size, p.pipeline_model_parallel_size,
                         vpp=virtual_pipeline_size(cfg), cp=p.context_parallel_size).table())
    device = target.facts.device_name or ("a CUDA GPU" if target.facts.cuda else "this CPU")
    print(f"kernel plan on {device}: {plan.describe()}")
    print(estimate(cfg, world_size, padded, scores_stored=plan.attention == "unfused").report())
    return 0
