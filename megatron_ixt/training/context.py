"""The run context: what an entry point resolves once and hands down.

``pretrain_ixt.py`` (and ``evaluation.engine.init_inference`` for the inference tools)
builds one :class:`RunContext` at the top of the run, as torchtitan's ``Trainer.__init__``
builds its ``ParallelDims`` once:

1. ``cfg``: parsed, validated and resolved (``runtime.kernels.validate_for_this_machine``
   fills ``transformer_impl``); nothing below the entry point edits it;
2. ``plan``: the kernel plan, from that same call; nothing below recomputes it;
3. ``layout``: this rank's place in megatron-core's process groups, from
   ``runtime.distributed.initialize_distributed(cfg, plan)``;
4. ``tokenizer``: built once (``tokenizers.build.tokenizer_from_config``); the model's
   vocabulary, the datasets and the step's EOD come from it;
5. ``dataset``: what the training data records about its prefixes
   (``data.datasets.dataset_record``: template and quality thresholds), which checkpoints store.

The modules below take the context, or the one field of it they need (the model builder,
the step and the optimizer setup take the plan; the loader the plan's ``document_masks``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from megatron_ixt.config.schema import Config
from megatron_ixt.runtime.distributed import ParallelLayout
from megatron_ixt.runtime.kernels import KernelPlan


@dataclass(frozen=True)
class RunContext:
    """One run's resolved inputs (see the module docstring for who builds each field)."""

    cfg: Config
    layout: ParallelLayout
    plan: KernelPlan
    # megatron-core's legacy tokenizer interface (tokenizers/base.py), built once from cfg.tokenizer.
    tokenizer: Any
    # The training data's prefix template and quality thresholds; None for mock data, plain
    # GPT datasets, datasets that disagree, and inference.
    dataset: Optional[dict] = None

