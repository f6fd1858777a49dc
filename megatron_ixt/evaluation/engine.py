"""Inference on a trained checkpoint in any TP/PP layout: per-token losses (and logits), and
decoding with a KV cache.

Used by every inference tool (``generate.py``, ``evaluate_conditioning.py``,
``evaluate_benchmarks.py``) and the resharding tests. The model shape comes from the
checkpoint's own configuration; the layout (TP, PP) from the command line, so a checkpoint
trained at TP=2 x PP=1 can be evaluated at TP=1 x PP=2: megatron-core's ``dist_checkpointing``
reshards the weights while loading.

Scoring whole sequences (:meth:`InferenceModel.token_losses`, ``token_scores``) runs through
megatron-core's pipeline schedule (forward only), so pipeline stages pass activations as in
training; only the per-token results leave the last stage, broadcast so that every rank (e.g.
rank 0, which prints) has them. Decoding (:class:`Decoder`) runs on megatron-core's static
inference path instead: its KV cache, its inference wrapper's forward step.
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
from megatron_ixt.model.gpt import build_model_chunks, padded_vocab_size, params_dtype
from megatron_ixt.runtime.kernels import current_device
from megatron_ixt.tokenizers.base import document_context, document_start_ids
from megatron_ixt.training.context import RunContext
from megatron_ixt.checkpoint.compat import checkpoint_source
from megatron_ixt.checkpoint.files import TEMPLATE_FILE, checkpoint_path, read_tracker
from megatron_ixt.checkpoint.load import load_sharded, open_checkpoint, read_common_state

logger = logging.getLogger("megatron_ixt")


# What a training run's configuration holds that inference does not do: its context
# parallelism and FP8 weights (this run's layout and kernels are its own), its logging,
# profiling and garbage-collection options (W&B would need its package here too).
TRAINING_ONLY = {"context_parallel_size": 1, "fp8_param_gather": False, "wandb_project": None, "profile": False,
                 "use_pytorch_profiler": False, "manual_gc": False, "log_throughput": False}


def config_from_checkpoint(load: str, overrides: Optional[dict] = None) -> Config:
    """The configuration a checkpoint was trained with, without its :data:`TRAINING_ONLY`
    options and with ``overrides`` (``{leaf: value}``, e.g. the parallel layout of this run)
    applied."""
    iteration = read_tracker(load)
    if iteration is None:
        raise ConfigError(f"--load {load}: no checkpoint (missing latest_checkpointed_iteration.txt)")
    path = checkpoint_path(load, iteration)
    common = read_common_state(path)
    if checkpoint_source(common, path) != "megatron_ixt":
        raise ConfigError(f"--load {load}: a Megatron-LM checkpoint (its common.pt has 'args', not this project's "
                          "'config'): load it with pretrain_ixt.py --finetune and the same model flags, then save")
    cfg = apply_overrides(Config.from_dict(common["config"]), {**TRAINING_ONLY, **(overrides or {})})
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


def vocabulary_argmax_hits(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, tp_rank: int,
                           tp_group) -> torch.Tensor:
    """[b, s] True where ``labels`` is the most likely of the tokenizer's ``vocab_size`` ids
    under vocab-parallel ``logits`` [b, s, V/tp]: the label's logit against the maximum over
    every TP shard (lm-eval's ``is_greedy``; a tie counts as greedy)."""
    shard = logits.shape[-1]
    first = tp_rank * shard
    ids = torch.arange(first, first + shard, device=logits.device)
    logits = logits.float().masked_fill(ids >= vocab_size, float("-inf"))
    best = logits.max(-1).values
    local = (labels >= first) & (labels < first + shard)
    label_logit = torch.where(local, logits.gather(-1, (labels - first).clamp(0, shard - 1).unsqueeze(-1)).squeeze(-1),
                              torch.zeros_like(best))
    if tp_group is not None and torch.distributed.get_world_size(tp_group) > 1:
        torch.distributed.all_reduce(best, op=torch.distributed.ReduceOp.MAX, group=tp_group)
        torch.distributed.all_reduce(label_logit, group=tp_group)
    return label_logit >= best


class InferenceModel:
    """A checkpoint's model on this rank's (TP, PP) shard, ready for forward passes.
    ``run``: the context :func:`init_inference` returned (its layout, kernel plan and tokenizer)."""

    def __init__(self, run: RunContext) -> None:
        self.cfg = run.cfg
        self.layout = run.layout
        self.plan = run.plan
        self.vocab_size = run.tokenizer.vocab_size
        # What precedes a document in this model's context (``--document-start``, recorded in
        # the checkpoint).
        self.document_start_ids = document_start_ids(run.tokenizer, self.cfg.model.document_start)
        self._tokenizer = run.tokenizer
        # Every weight comes from the checkpoint: none is initialised first.
        self.chunks = build_model_chunks(self.cfg, self.layout, run.plan, self.vocab_size, initialize=False)
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

    def text_start(self, prefix=()) -> list[int]:
        """What precedes a text under the feedback ``prefix`` (its ids; empty for none): the
        document start and the prefix, in the order of the model's training data
        (``tokenizers.base.document_context``)."""
        return document_context(self._tokenizer, self.cfg.model.document_start, prefix)

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

    @property
    def takes_padding_masks(self) -> bool:
        """Whether the attention honours a padding mask in inference: the torch attention
        (``model/attention.py``) does; Transformer Engine's and megatron-core's unfused one
        follow the mask type megatron-core sets for inference steps (``causal``, then
        ``no_mask``) instead."""
        return self.plan.attention in ("sdpa", "flex")

    @torch.no_grad()
    def _run(self, tokens: torch.Tensor, collect) -> torch.Tensor:
        """Forward ``tokens`` [b, s] through megatron-core's pipeline schedule (forward only);
        ``collect(vocab-parallel logits [b, s, V/tp])`` makes the result on the last stage,
        which every rank then receives."""
        tokens = tokens.to(self.device)
        b, s = tokens.shape
        position_ids = torch.arange(s, device=self.device).unsqueeze(0).expand(b, -1)

        def forward_step(data_iterator, model):
            next(data_iterator)
            output = model(tokens, position_ids, None)  # last stage: vocab-parallel logits [b, s, V/tp]
            return output, lambda output_tensor, non_loss_data=True: collect(output_tensor)

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
        return self.broadcast_from_last_stage(result, torch.float32)

    def broadcast_from_last_stage(self, tensor: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """``tensor`` (given on the last pipeline stage, None elsewhere) on every rank of
        this rank's pipeline group; its shape travels first."""
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
            tensor = torch.empty(shape, dtype=dtype, device=self.device)
        tensor = tensor.contiguous()
        torch.distributed.broadcast(tensor, src=src, group=group)
        return tensor

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits [b, s, padded V] of every position (tests, parity checks)."""
        return self._run(tokens, lambda logits: gather_from_tensor_model_parallel_region(logits).float())

    def token_losses(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-token cross entropy [b, s] of ``labels`` after ``tokens`` (right-padded rows are
        fine: causal attention keeps the padding out of every earlier position)."""
        labels = labels.to(self.device)
        return self._run(tokens, lambda logits: vocabulary_losses(logits, labels, self.vocab_size, self.layout.tp_rank))

    def token_scores(self, tokens: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(losses [b, s], greedy [b, s] bool)``: as :meth:`token_losses`, and whether each
        label is the most likely id (lm-eval's ``is_greedy``)."""
        labels = labels.to(self.device)

        def collect(logits):
            greedy = vocabulary_argmax_hits(logits, labels, self.vocab_size, self.layout.tp_rank, self.layout.tp_group)
            losses = vocabulary_losses(logits, labels, self.vocab_size, self.layout.tp_rank)
            return torch.stack([losses, greedy.float()])

        both = self._run(tokens, collect)
        return both[0], both[1].bool()

    def decoder(self, batch_size: int, max_length: int) -> "Decoder":
        """A KV cache for ``batch_size`` sequences of up to ``max_length`` tokens."""
        return Decoder(self, batch_size, max_length)


class Decoder:
    """A KV cache for one batch of sequences, on megatron-core's static inference path: its
    ``StaticInferenceContext`` holds the cache (each attention layer allocates its
    ``[max_length, batch, kv heads, head dim]`` buffers on first use and writes a step's keys
    and values at the context's sequence and batch offsets), and its ``GPTInferenceWrapper``
    runs each step at any layout: TP ranks gather the last position's logits, pipeline stages
    pass activations on with megatron-core's send and receive. On CPU the compatibility layer
    maps their CUDA allocations to the CPU (``runtime/cpu_compat.py``).

    A row may start after position 0 (``starts``: left padding, so that prompts of different
    lengths end together): its keys before its start are masked. Only the torch attention
    (``model/attention.py``, the attention on CPU and on CUDA without Transformer Engine)
    takes such masks (``InferenceModel.takes_padding_masks``); Transformer Engine's attention follows
    the mask type megatron-core sets for inference and ignores the mask."""

    def __init__(self, model: InferenceModel, batch_size: int, max_length: int) -> None:
        from megatron.core.inference.contexts import StaticInferenceContext
        from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import GPTInferenceWrapper
        from megatron.core.inference.model_inference_wrappers.inference_wrapper_config import InferenceWrapperConfig

        if len(model.chunks) != 1:
            raise ValueError("megatron-core's inference path has no interleaved pipeline (one model chunk per stage)")
        self.model = model
        cfg = model.cfg.model
        self.context = StaticInferenceContext(batch_size, max_length)
        config = InferenceWrapperConfig(
            hidden_size=cfg.hidden_size, params_dtype=params_dtype(cfg),
            # Never split a step into pipeline micro-batches (Megatron-LM's default, -1).
            inference_batch_times_seqlen_threshold=-1, padded_vocab_size=padded_vocab_size(model.vocab_size, model.cfg),
            inference_max_requests=batch_size, inference_max_seq_length=max_length)
        self.wrapper = GPTInferenceWrapper(model.chunks[0], config, self.context)
        self.wrapper.prep_model_for_inference()

    def forward(self, tokens: torch.Tensor, position: int, first_row: int = 0,
                starts: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Write ``tokens`` [g, s] at positions ``position .. position + s - 1`` of the rows
        ``first_row .. first_row + g - 1``, and return the logits [g, V] of their last position
        over the tokenizer's ids (fp32, on the last pipeline stage; None on the other stages).
        ``starts`` [g]: each row's first position (None: all 0)."""
        device = self.model.device
        tokens = tokens.to(device)
        g, s = tokens.shape
        self.context.sequence_len_offset, self.context.batch_size_offset = position, first_row
        if s == 1 and position:
            self.context.enable_decode_mode()
        else:
            self.context.enable_prefill_mode()
        positions = torch.arange(position, position + s, device=device).unsqueeze(0).expand(g, -1)
        mask = None
        if starts is not None and bool((starts > 0).any()):
            if not self.model.takes_padding_masks:
                raise ValueError(f"{self.model.plan.attention} attention ignores padding masks")
            starts = starts.to(device)
            positions = (positions - starts.unsqueeze(1)).clamp(min=0)  # for learned position embeddings
            keys = torch.arange(position + s, device=device)
            queries = torch.arange(position, position + s, device=device)
            # megatron-core's convention: True = masked. Causal, and nothing before a row's start.
            mask = ((keys.view(1, 1, -1) < starts.view(-1, 1, 1)) | (keys.view(1, 1, -1) > queries.view(1, -1, 1)))
            mask = mask.unsqueeze(1)
        logits = self.wrapper.run_one_forward_step({"tokens": tokens, "position_ids": positions,
                                                    "attention_mask": mask})
        if logits is None:
            return None
        return logits[:, -1, :self.model.vocab_size].float()

    @torch.inference_mode()
    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` of the batch (finished sequences stop costing compute)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.model.device)

        def kept(cache: torch.Tensor) -> torch.Tensor:  # in the buffer's own layout (model/attention.py)
            order = sorted(range(4), key=lambda d: -cache.stride(d))
            back = [order.index(d) for d in range(4)]
            return cache.permute(order).index_select(order.index(1), index).permute(back)

        memory = self.context.key_value_memory_dict
        for layer, (keys, values) in memory.items():
            memory[layer] = (kept(keys), kept(values))
        self.context.max_batch_size = len(rows)


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
