"""One training step and one evaluation pass, over megatron-core's pipeline schedules.

The forward step returns per-token losses; the loss function reduces them under the loss
mask to ``(sum, token count)``. megatron-core then sums both over micro-batches and
data-parallel ranks (``calculate_per_token_loss``), so the gradient is that of the mean
loss per trained token for *every* parallel layout: this is what makes TP/PP/DP runs
match a single-process run. With ``--no-calculate-per-token-loss`` megatron-core's schedule
divides each micro-batch's sum by its own token count and by the number of micro-batches
instead (Megatron-LM's default). The reported ``lm loss`` is the mean over the global batch's
tokens either way, as Megatron-LM's ``train_step`` reduces its ``[sum, count]`` reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Iterator, Optional

import torch
from megatron.core.optimizer import optimizer as mcore_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_ixt.config.schema import Config
from megatron_ixt.data.batch import Batch, boundary_field
from megatron_ixt.format.levels import NOT_ANNOTATED, NUM_LEVELS
from megatron_ixt.data.loader import MicroBatchStream
from megatron_ixt.model.attention import attention_inputs
from megatron_ixt.runtime.distributed import ParallelLayout
from megatron_ixt.runtime import faults
from megatron_ixt.training.context import RunContext
from megatron_ixt.training.hooks import empty_unused_memory

# Masks a batch may carry besides the loss mask; each becomes its own reported loss
# (IXT's prefix tokens vs. text tokens, and text trained without its prefix in view).
# name in batch -> name in reports.
REPORTED_MASKS = {"text_mask": "text loss", "prefix_mask": "prefix loss", "orphan_mask": "orphan text loss"}
QUALITY_LEVELS = range(NOT_ANNOTATED, NUM_LEVELS + 1)


def loss_func(loss_mask: torch.Tensor, report_masks: dict, output_tensor: torch.Tensor):
    """``(masked loss sum, trained tokens, reports)``; each report is ``[sum, count]`` so
    that it can be summed over micro-batches and ranks before dividing."""
    losses = output_tensor.float().view(-1)
    mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * mask)
    num_tokens = mask.sum().to(torch.int)
    reports = {"lm loss": torch.stack([loss.detach(), mask.sum()])}
    for name, m in report_masks.items():
        m = m.view(-1).float() * mask
        reports[name] = torch.stack([(losses.detach() * m).sum(), m.sum()])
    return loss, num_tokens, reports


@dataclass(frozen=True)
class StepContext:
    """What a step needs besides the batch: how document boundaries reach the attention
    kernel (the kernel plan's ``document_masks``), the EOD token that ends a document, and
    the parallel layout (the data-parallel group the reports are summed over)."""

    document_masks: str
    eod: int
    layout: ParallelLayout
    boundaries: str = "tokens"
    """The batch field the document boundaries come from (``data.batch.boundary_field``): the
    EOD ``tokens``, or the ``position_ids`` where they restart (SFT)."""

    @staticmethod
    def of(run: RunContext) -> "StepContext":
        """The step's view of the run: the plan's document masks, the tokenizer's EOD, the layout."""
        return StepContext(run.plan.document_masks, run.tokenizer.eod, run.layout, boundary_field(run.cfg.data.sft))

    @property
    def packed(self) -> bool:
        """Micro-batches are flattened to one THD sequence of ``b * s`` tokens."""
        return self.document_masks == "packed"

    def schedule_shape(self, cfg: Config) -> dict:
        """The activation shape megatron-core's pipeline schedule sends between stages."""
        b, s = cfg.training.micro_batch_size, cfg.model.seq_length
        return {"seq_length": b * s, "micro_batch_size": 1} if self.packed else {"seq_length": s, "micro_batch_size": b}


def forward_step(ctx: StepContext, data_iterator: Iterator[Optional[Batch]], model, poison: bool = False):
    """megatron-core's forward-step contract (bind ``ctx`` with ``functools.partial``): run
    the model on the next micro-batch and return ``(output, loss function)``.

    The batch holds only what this pipeline stage uses (``data/loader.py``), already on the
    device: a middle stage takes its input from the previous stage and may get ``None``.
    Document boundaries come from the EOD tokens, in the form the kernel needs.
    ``poison`` (fault injection) turns this rank's output into NaN before the backward pass."""
    batch = next(data_iterator) or Batch()
    if ctx.layout.cp > 1:  # every CP rank of a data-parallel replica read the same micro-batch
        batch = batch.on_this_context_parallel_rank()
    tokens, labels, position_ids = batch.tokens, batch.labels, batch.position_ids
    attention_mask, packed_seq_params = attention_inputs(
        tokens, ctx.eod, ctx.document_masks, position_ids if ctx.boundaries == "position_ids" else None)
    if packed_seq_params is not None:
        tokens, labels, position_ids = (None if t is None else t.reshape(1, -1) for t in (tokens, labels, position_ids))
    report_masks = {}
    if batch.loss_mask is not None:  # the last stage
        report_masks = {name: getattr(batch, field) for field, name in REPORTED_MASKS.items()
                        if getattr(batch, field) is not None}
        if batch.token_level is not None and not model.training:
            # Validation: text loss per quality level of the document each token belongs to.
            for lvl in QUALITY_LEVELS:
                report_masks[f"text loss level {lvl}"] = (batch.token_level == lvl).float() * batch.text_mask
    output = model(tokens, position_ids, attention_mask, labels=labels, packed_seq_params=packed_seq_params)
    if poison:
        output = output * float("nan")
    return output, partial(loss_func, batch.loss_mask, report_masks)


def sum_reports(reports: list[dict], layout: ParallelLayout) -> dict[str, torch.Tensor]:
    """Sum the ``[sum, count]`` reports of all micro-batches, then over data-parallel ranks.
    Only the last pipeline stage has reports; elsewhere this returns {}."""
    totals: dict[str, torch.Tensor] = {}
    for report in reports:
        for name, value in report.items():
            totals[name] = totals.get(name, 0) + value.detach().double()
    if totals:
        names = sorted(totals)
        flat = torch.stack([totals[n] for n in names])
        torch.distributed.all_reduce(flat, group=layout.dp_group)
        totals = {n: flat[i] for i, n in enumerate(names)}
    return totals


def mean_losses(totals: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: (v[0] / v[1]).item() if v[1] > 0 else float("nan") for name, v in totals.items()}


@dataclass
class StepResult:
    reports: dict  # name -> tensor [sum, count] (last pipeline stage only)
    grad_norm: Optional[float]
    skipped: bool
    step_ms: float = 0.0  # wall time of the step including data loading (set by the loop)
    global_batch_size: int = 0  # the step's samples, ramping up with --rampup-batch-size (set by the loop)
    loss_scale: Optional[float] = None  # --fp16: the loss scale after this step
    overflow: bool = False
    """Skipped by FP16 dynamic loss scaling (gradients overflowed, the scale backs off): the
    scaler's normal signal, not a diverging run, unless the scale is already at its floor."""


def optimizer_step(optimizer) -> tuple[bool, float, bool]:
    """megatron-core's ``ChainedOptimizer.step`` with one addition: a non-finite global
    gradient norm skips the update. The norm is the one the optimizer computes for clipping
    anyway (reduced over the model-parallel group; gradients are already reduced over data
    parallelism), so every rank takes the same decision with no extra scan of the gradients.
    A NaN/Inf loss gives non-finite gradients, so it is caught here too.
    Returns ``(stepped, grad norm, found_inf)``: ``found_inf`` when the FP16 loss scaler's own
    check (which also updates its scale) skipped the step."""
    if optimizer.prepare_grads():  # an fp16 loss scaler found inf: megatron-core's own skip
        return False, float("nan"), True
    grad_norm = float(optimizer.get_grad_norm())
    if not math.isfinite(grad_norm):
        return False, grad_norm, False
    for opt in optimizer.chained_optimizers:
        if getattr(opt, "is_stub_optimizer", False) or opt.config.clip_grad <= 0.0 or not opt.get_parameters():
            continue
        # Looked up at call time: on CPU the compatibility layer replaces this function.
        mcore_optimizer.clip_grad_by_total_norm_fp32(
            opt.get_parameters(), max_norm=opt.config.clip_grad, total_norm=grad_norm,
            use_decoupled_grad=opt.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
    return optimizer.step_with_ready_grads(), grad_norm, False


def train_step(cfg: Config, ctx: StepContext, data: MicroBatchStream, num_microbatches: int, model, optimizer,
               scheduler, iteration: int = 0) -> StepResult:
    """Forward and backward over the next ``num_microbatches`` micro-batches of ``data`` (one
    global batch), then one optimizer step (skipped if the gradient norm is non-finite).
    ``iteration`` is the 1-based number of this step (for fault injection in tests)."""
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    forward_backward = get_forward_backward_func()
    # Fault injection: a NaN on one rank before the data-parallel reduction, as a real
    # overflow would be; the reduction spreads it to every replica.
    poison = faults.triggered("nan-grad", iteration, torch.distributed.get_rank())
    reports = forward_backward(
        forward_step_func=partial(forward_step, ctx, poison=poison),
        data_iterator=data.iterators(),
        model=model,
        num_microbatches=num_microbatches,
        forward_only=False,
        **ctx.schedule_shape(cfg),
    )
    totals = sum_reports(reports, ctx.layout)
    empty_unused_memory(cfg, level=1)  # the activations are freed; the optimizer allocates next
    scale_before = optimizer.get_loss_scale().item() if cfg.model.fp16 else None
    ok, grad_norm, found_inf = optimizer_step(optimizer)
    scale = optimizer.get_loss_scale().item() if cfg.model.fp16 else None
    if not ok:
        o = cfg.optimizer
        backed_off = found_inf and o.loss_scale is None and scale_before > o.min_loss_scale
        return StepResult(totals, None, skipped=True, loss_scale=scale, overflow=backed_off)
    # This step's samples (the global batch may ramp up), as Megatron-LM's train_step counts them.
    scheduler.step(increment=num_microbatches * cfg.training.micro_batch_size * ctx.layout.dp)
    return StepResult(totals, grad_norm, skipped=False, loss_scale=scale)


@torch.no_grad()
def evaluate(cfg: Config, ctx: StepContext, data: MicroBatchStream, model, num_microbatches: int, iters: int) -> dict:
    """Forward-only passes over the next ``iters`` global batches of ``data``; summed
    ``[sum, count]`` reports."""
    for chunk in model:
        chunk.eval()
    forward_backward = get_forward_backward_func()
    totals: dict[str, torch.Tensor] = {}
    for _ in range(iters):
        reports = forward_backward(
            forward_step_func=partial(forward_step, ctx),
            data_iterator=data.iterators(),
            model=model,
            num_microbatches=num_microbatches,
            forward_only=True,
            **ctx.schedule_shape(cfg),
        )
        for name, value in sum_reports(reports, ctx.layout).items():
            totals[name] = totals.get(name, 0) + value
        empty_unused_memory(cfg, level=1)
    for chunk in model:
        chunk.train()
    return totals
