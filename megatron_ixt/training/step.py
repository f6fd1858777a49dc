"""One training step and one evaluation pass, over megatron-core's pipeline schedules.

The forward step returns per-token losses; the loss function reduces them under the loss
mask to ``(sum, token count)``. megatron-core then sums both over micro-batches and
data-parallel ranks (``calculate_per_token_loss``), so the gradient is that of the mean
loss per trained token for *every* parallel layout: this is what makes TP/PP/DP runs
match a single-process run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Iterator, Optional

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_ixt.config.schema import Config
from megatron_ixt.training import faults

# Masks a batch may carry besides the loss mask; each becomes its own reported loss
# (IXT's prefix tokens vs. text tokens, and text trained without its prefix in view).
# name in batch -> name in reports.
REPORTED_MASKS = {"text_mask": "text loss", "prefix_mask": "prefix loss", "orphan_mask": "orphan text loss"}
QUALITY_LEVELS = range(6)  # 0: not annotated, 1..5


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


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


def forward_step(data_iterator: Iterator[dict], model):
    """megatron-core's forward-step contract: run the model on the next micro-batch and
    return ``(output, loss function)``. Middle pipeline stages take their input from the
    previous stage; the token ids passed here are then unused."""
    batch = next(data_iterator)
    device = _device()
    tokens = batch["tokens"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    position_ids = batch["position_ids"].to(device, non_blocking=True)
    attention_mask = batch.get("attention_mask")
    if attention_mask is not None:
        attention_mask = attention_mask.to(device, non_blocking=True)
    loss_mask = batch["loss_mask"].to(device, non_blocking=True)
    report_masks = {REPORTED_MASKS[k]: batch[k].to(device) for k in REPORTED_MASKS if k in batch}
    if "token_level" in batch and not model.training:
        # Validation: text loss per quality level of the document each token belongs to.
        level, text = batch["token_level"].to(device), batch["text_mask"].to(device)
        for lvl in QUALITY_LEVELS:
            report_masks[f"text loss level {lvl}"] = (level == lvl).float() * text
    output = model(tokens, position_ids, attention_mask, labels=labels)
    return output, partial(loss_func, loss_mask, report_masks)


def _iterators(micro_batches: list[dict], num_chunks: int):
    """One iterator per model chunk over the same micro-batches (the interleaved schedule
    pulls from chunk k's iterator when it runs chunk k)."""
    if num_chunks == 1:
        return iter(micro_batches)
    return [iter(micro_batches) for _ in range(num_chunks)]


def sum_reports(reports: list[dict]) -> dict[str, torch.Tensor]:
    """Sum the ``[sum, count]`` reports of all micro-batches, then over data-parallel ranks.
    Only the last pipeline stage has reports; elsewhere this returns {}."""
    totals: dict[str, torch.Tensor] = {}
    for report in reports:
        for name, value in report.items():
            totals[name] = totals.get(name, 0) + value.detach().double()
    if totals:
        names = sorted(totals)
        flat = torch.stack([totals[n] for n in names])
        torch.distributed.all_reduce(flat, group=parallel_state.get_data_parallel_group())
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


def _nonfinite_anywhere(totals: dict, model) -> bool:
    """True on every rank if any rank saw a NaN/Inf loss or gradient: the decision to skip
    must be collective, or ranks would diverge."""
    bad = 0.0
    if totals and not math.isfinite(float(totals["lm loss"][0])):
        bad = 1.0
    for chunk in model:
        for buffer in chunk.buffers:
            if not torch.isfinite(buffer.grad_data).all():
                bad = 1.0
    flag = torch.tensor([bad], device=_device())
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def train_step(cfg: Config, micro_batches: list[dict], model, optimizer, scheduler, iteration: int = 0) -> StepResult:
    """Forward and backward over all micro-batches of one global batch, then one optimizer
    step (skipped, with grads dropped, if anything was non-finite). ``iteration`` is the
    1-based number of this step (for fault injection in tests)."""
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    forward_backward = get_forward_backward_func()
    reports = forward_backward(
        forward_step_func=forward_step,
        data_iterator=_iterators(micro_batches, len(model)),
        model=model,
        num_microbatches=len(micro_batches),
        seq_length=cfg.model.seq_length,
        micro_batch_size=cfg.training.micro_batch_size,
        forward_only=False,
    )
    totals = sum_reports(reports)
    if faults.triggered("nan-grad", iteration, torch.distributed.get_rank()):
        model[0].buffers[0].grad_data.fill_(float("nan"))
    if _nonfinite_anywhere(totals, model):
        return StepResult(totals, None, skipped=True)
    ok, grad_norm, _ = optimizer.step()
    scheduler.step(increment=cfg.training.global_batch_size)
    return StepResult(totals, grad_norm, skipped=not ok)


@torch.no_grad()
def evaluate(cfg: Config, batches: Iterator[dict], model, num_microbatches: int, iters: int) -> dict:
    """Forward-only passes over ``iters`` global batches; summed ``[sum, count]`` reports."""
    for chunk in model:
        chunk.eval()
    forward_backward = get_forward_backward_func()
    totals: dict[str, torch.Tensor] = {}
    for _ in range(iters):
        micro = [next(batches) for _ in range(num_microbatches)]
        reports = forward_backward(
            forward_step_func=forward_step,
            data_iterator=_iterators(micro, len(model)),
            model=model,
            num_microbatches=num_microbatches,
            seq_length=cfg.model.seq_length,
            micro_batch_size=cfg.training.micro_batch_size,
            forward_only=True,
        )
        for name, value in sum_reports(reports).items():
            totals[name] = totals.get(name, 0) + value
    for chunk in model:
        chunk.train()
    return totals
