"""Inference on a trained checkpoint in any TP/PP layout: logits and per-token losses.

Used by ``tools/evaluate_conditioning.py``, ``tools/generate.py`` and the resharding tests.
The model shape comes from the checkpoint's own configuration; the layout (TP, PP) from the
command line, so a checkpoint trained at TP=2 x PP=1 can be evaluated at TP=1 x PP=2:
megatron-core's ``dist_checkpointing`` reshards the weights while loading.

Every forward runs through megatron-core's pipeline schedule (forward only), so pipeline
stages pass activations as in training; the results are broadcast from the last stage so
that every rank (e.g. rank 0, which prints) has them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch
from megatron.core import tensor_parallel
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

from megatron_ixt.config.cli import ConfigError, apply_overrides
from megatron_ixt.config.flags import add_dataclass_arguments, add_tokenizer_overrides
from megatron_ixt.config.schema import TOKENIZER_FILE_FIELDS, Config, ParallelConfig, arg, required
from megatron_ixt.model.gpt import build_model_chunks
from megatron_ixt.runtime.kernels import current_device
from megatron_ixt.tokenizers.base import document_start_ids
from megatron_ixt.training.context import RunContext
from megatron_ixt.checkpoint.compat import checkpoint_source
from megatron_ixt.checkpoint.files import TEMPLATE_FILE, checkpoint_path, read_tracker
from megatron_ixt.checkpoint.load import load_sharded, open_checkpoint, read_common_state

logger = logging.getLogger("megatron_ixt")


def config_from_checkpoint(load: str, overrides: Optional[dict] = None) -> Config:
    """The configuration a checkpoint was trained with, with ``overrides`` (``{leaf: value}``,
    e.g. the parallel layout of this run) applied."""
    iteration = read_tracker(load)
    if iteration is None:
        raise ConfigError(f"--load {load}: no checkpoint (missing latest_checkpointed_iteration.txt)")
    path = checkpoint_path(load, iteration)
    common = read_common_state(path)
    if checkpoint_source(common, path) != "megatron_ixt":
        raise ConfigError(f"--load {load}: a Megatron-LM checkpoint (its common.pt has 'args', not this project's "
                          "'config'): load it with pretrain_ixt.py --finetune and the same model flags, then save")
    cfg = apply_overrides(Config.from_dict(common["config"]), overrides or {})
    cfg.checkpoint.load = load
    return cfg


def vocabulary_losses(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, tp_rank: int) -> torch.Tensor:
    """Per-token cross entropy [b, s] of vocab-parallel ``logits`` [b, s, V/tp] over the
    tokenizer's ``vocab_size`` ids. The padding rows are left out of the softmax: they belong
    to no token and their number depends on the layout (``--make-vocab-size-divisible-by`` x
    TP), so that an evaluation gives the same losses at every layout. (Training's loss, as
    Megatron-LM's, runs over the padded vocabulary.)"""
    shard = logits.shape[-1]
    ids = torch.arange(tp_rank * shard, (tp_rank + 1) * shard, device=logits.device)
    logits = logits.float().masked_fill(ids >= vocab_size, float("-inf"))
    return tensor_parallel.vocab_parallel_cross_entropy(logits, labels)


class InferenceModel:
    """A checkpoint's model on this rank's (TP, PP) shard, ready for forward passes.
    ``run``: the context :func:`init_inference` returned (its layout, kernel plan and tokenizer)."""

    def __init__(self, run: RunContext) -> None:
        self.cfg = run.cfg
        self.layout = run.layout
        self.vocab_size = run.tokenizer.vocab_size
        # What precedes a document in this model's context (``--document-start``, recorded in
        # the checkpoint).
        self.document_start_ids = document_start_ids(run.tokenizer, self.cfg.model.document_start)
        self.chunks = build_model_chunks(self.cfg, self.layout, run.plan, self.vocab_size)
        for chunk in self.chunks:
            chunk.eval()
        self.iteration = self._load()

    def _load(self) -> int:
        load = self.cfg.checkpoint.load
        opened = open_checkpoint(load, self.cfg, self.chunks, self.vocab_size)
        if opened is None:
            raise ConfigError(f"--load {load}: no checkpoint (missing latest_checkpointed_iteration.txt)")
        load_sharded(opened, self.chunks)
        self.path = opened.path
        self.prefix = opened.common.get("ixt_prefix")
        logger.info("loaded %s (iteration %d) for inference", opened.path, opened.iteration)
        return opened.iteration

    def prefix_template(self) -> Optional[str]:
        """The prefix template the model was trained with (a built-in name, or the template
        file copied into the checkpoint); None when the checkpoint records none."""
        template = (self.prefix or {}).get("template")
        if not template:
            return None
        copied = os.path.join(self.path, TEMPLATE_FILE)
        return copied if os.path.isfile(copied) else (template.get("source") or template["name"])

    def quality_thresholds(self):
        """The quality thresholds of the training data (quantile cut points when it used
        them; fixed fifths when it recorded none)."""
        from megatron_ixt.format.levels import QualityThresholds

        recorded = (self.prefix or {}).get("quality_thresholds")
        return QualityThresholds.from_dict(recorded) if recorded else QualityThresholds.fixed()

    @property
    def device(self) -> torch.device:
        return current_device()

    @torch.no_grad()
    def _run(self, tokens: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """Forward ``tokens`` [b, s]; returns per-token losses [b, s] when ``labels`` are
        given, else full-vocabulary logits [b, s, V]. Result on every rank."""
        tokens = tokens.to(self.device)
        b, s = tokens.shape
        position_ids = torch.arange(s, device=self.device).unsqueeze(0).expand(b, -1)
        lab = labels.to(self.device) if labels is not None else None

        def forward_step(data_iterator, model):
            next(data_iterator)
            output = model(tokens, position_ids, None)  # last stage: vocab-parallel logits [b, s, V/tp]

            def collect(output_tensor, non_loss_data=True):
                if lab is None:  # -> full (padded) vocabulary
                    return gather_from_tensor_model_parallel_region(output_tensor).float()
                return vocabulary_losses(output_tensor, lab, self.vocab_size, self.layout.tp_rank)

            return output, collect

        # The interleaved schedule needs at least PP micro-batches: run the same batch that
        # many times (each chunk gets its own iterator) and keep the first result.
        interleaved = len(self.chunks) > 1
        n_micro = self.layout.pp if interleaved else 1
        iterators = [iter([None] * n_micro) for _ in self.chunks] if interleaved else iter([None])
        outputs = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iterators, model=self.chunks,
            num_microbatches=n_micro, seq_length=s, micro_batch_size=b, forward_only=True,
            collect_non_loss_data=True,
        )
        result = outputs[0] if self.layout.is_last_stage() else None
        return self._broadcast_from_last_stage(result)

    def _broadcast_from_last_stage(self, tensor: Optional[torch.Tensor]) -> torch.Tensor:
        if self.layout.pp == 1:
            return tensor
        group, src = self.layout.pp_group, self.layout.pp_last_rank
        meta = torch.zeros(4, dtype=torch.long, device=self.device)  # [ndim, sizes...]
        if tensor is not None:
            meta[0] = tensor.dim()
            meta[1:1 + tensor.dim()] = torch.tensor(tensor.shape)
        torch.distributed.broadcast(meta, src=src, group=group)
        if tensor is None:
            shape = meta[1:1 + int(meta[0])].tolist()
            tensor = torch.empty(shape, dtype=torch.float32, device=self.device)
        tensor = tensor.contiguous()
        torch.distributed.broadcast(tensor, src=src, group=group)
        return tensor

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._run(tokens, None)

    def token_losses(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._run(tokens, labels)


def prefix_template_for(model: InferenceModel, requested: Optional[str]) -> str:
    """The prefix template to condition on: ``requested`` (``--prefix-template``), else the
    one the checkpoint records; a warning when the two differ."""
    from megatron_ixt.format.prefixes import load_template

    recorded = model.prefix_template()
    if requested is None:
        if recorded is None:
            raise ConfigError(f"checkpoint {model.path} records no prefix template (it was trained on mock data, "
                              "plain GPT datasets or datasets preprocessed before templates were recorded): "
                              "pass --prefix-template")
        logger.info("prefix template %s (recorded in the checkpoint)", recorded)
        return recorded
    try:
        differs = recorded is not None and load_template(requested).sha256 != load_template(recorded).sha256
    except ValueError as error:
        raise ConfigError(f"--prefix-template: {error}") from None
    if differs:
        logger.warning("--prefix-template %s differs from the template the model was trained with (%s)",
                       requested, recorded)
    return requested


def init_inference(cfg: Config) -> RunContext:
    """The run context of an inference tool (any launcher, any layout), built once: ``cfg``
    validated, its kernel plan, process groups and seeds (this rank's layout), and the
    tokenizer ``cfg`` names (by default the one the checkpoint was trained with)."""
    from megatron_ixt.runtime.distributed import initialize_distributed, resolve_launch_env
    from megatron_ixt.runtime.kernels import validate_for_this_machine
    from megatron_ixt.runtime.lifecycle import watch_launcher
    from megatron_ixt.tokenizers.build import tokenizer_from_config

    watch_launcher()  # under torchrun: end with the launcher
    cfg.data.mock_data = cfg.data.mock_data or not cfg.data.data_path  # inference needs no training data
    plan = validate_for_this_machine(cfg, resolve_launch_env()["world_size"])
    layout = initialize_distributed(cfg, plan)
    return RunContext(cfg, layout, plan, tokenizer=tokenizer_from_config(cfg.tokenizer))


def on_output_rank() -> bool:
    """The rank that prints results (global rank 0: it has every broadcast result)."""
    return torch.distributed.get_rank() == 0


@dataclass
class InferenceConfig:
    """The flags of every inference tool besides the layout to run at (``ParallelConfig``'s)
    and the tokenizer (``TokenizerConfig``'s, by default the checkpoint's)."""

    load: str = required("checkpoint folder (as given to --save)")
    prefix_template: Optional[str] = arg(
        None, "critique, quality, none or a template YAML file (default: the template of the data the "
              "checkpoint was trained on, which the checkpoint records)")


INFERENCE_LAYOUT_FLAGS = ("tensor_model_parallel_size", "pipeline_model_parallel_size")
def add_inference_args(parser) -> None:
    """Flags every inference tool takes: the checkpoint, the layout to run it at, and
    optional tokenizer overrides (default: the tokenizer the checkpoint was trained with)."""
    add_dataclass_arguments(parser, InferenceConfig, fields=("load",))
    add_dataclass_arguments(parser, ParallelConfig, fields=INFERENCE_LAYOUT_FLAGS)
    add_tokenizer_overrides(parser, "default: the checkpoint's")
    add_dataclass_arguments(parser, InferenceConfig, fields=("prefix_template",))


def load_for_inference(args):
    """(config, model, tokenizer) for ``args`` from :func:`add_inference_args`, on the
    initialised process groups of this launch."""
    overrides = {"tensor_model_parallel_size": args.tensor_model_parallel_size,
                 "pipeline_model_parallel_size": args.pipeline_model_parallel_size,
                 "sequence_parallel": False, "num_layers_per_virtual_pipeline_stage": None,
                 "hidden_dropout": 0.0, "attention_dropout": 0.0}
    for name in TOKENIZER_FILE_FIELDS:
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    cfg = config_from_checkpoint(args.load, overrides)
    run = init_inference(cfg)
    return cfg, InferenceModel(run), run.tokenizer
