"""The training loop, top to bottom.

    setup: tokenizer -> model (megatron-core GPTModel in DDP) -> optimizer + schedule
           -> datasets -> resume from --load -> micro-batch stream -> metrics
    loop:  train_step (the schedule pulls its micro-batches) -> counters -> log / evaluate / save / exit

Side concerns (checkpoints, evaluation, exit conditions) are small functions called from
the loop; the loop itself has no feature flags in it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from megatron.core.num_microbatches_calculator import (destroy_num_microbatches_calculator,
                                                       get_current_global_batch_size, get_num_microbatches,
                                                       init_num_microbatches_calculator, update_num_microbatches)

from megatron_ixt.checkpoint.load import load
from megatron_ixt.checkpoint.save import Saver
from megatron_ixt.config.schema import Config
from megatron_ixt.data.datasets import build_datasets
from megatron_ixt.data.loader import samples_per_evaluation, training_stream, validation_stream
from megatron_ixt.model.flops import device_peak_tflops, training_flops_per_iteration
from megatron_ixt.model.gpt import count_parameters, padded_vocab_size
from megatron_ixt.runtime.distributed import ParallelLayout
from megatron_ixt.runtime.kernels import current_device
from megatron_ixt.training.context import RunContext
from megatron_ixt.training.hooks import TrainingHooks
from megatron_ixt.training.metrics import MetricsLogger
from megatron_ixt.training.setup import build_ddp_model, build_optimizer
from megatron_ixt.training.step import StepContext, evaluate, train_step

logger = logging.getLogger("megatron_ixt")


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainState:
    """What a checkpoint must restore besides model and optimizer to continue exactly."""

    iteration: int = 0
    consumed_train_samples: int = 0
    consumed_valid_samples: int = 0
    skipped_iterations: int = 0
    consecutive_nonfinite: int = 0
    history: dict = field(default_factory=dict)


def num_microbatches(cfg: Config, layout: ParallelLayout) -> int:
    """Micro-batches of a full global batch (validation's, which never ramps up)."""
    return layout.num_microbatches(cfg.training.global_batch_size, cfg.training.micro_batch_size)


def start_batch_calculator(cfg: Config, layout: ParallelLayout) -> None:
    """megatron-core's process-wide micro-batch calculator, as Megatron-LM sets it up: the
    global batch of each step (constant, or ramping up with --rampup-batch-size) follows the
    consumed samples (``config.batch_schedule``, which validation checked it with)."""
    t = cfg.training
    destroy_num_microbatches_calculator()  # a process that trains twice (tests) starts afresh
    init_num_microbatches_calculator(torch.distributed.get_rank(), t.rampup_batch_size, t.global_batch_size,
                                     t.micro_batch_size, layout.dp)


def pretrain(run: RunContext, datasets_fn=build_datasets) -> TrainState:
    """Train per ``run.cfg`` on the initialised process groups; ``run`` is what the entry
    point resolved once (layout, kernel plan, tokenizer, dataset record). Returns the final state.
    ``datasets_fn(cfg, tokenizer) -> (train, valid, test)`` selects the data (IXT or GPT)."""
    cfg, layout, tokenizer = run.cfg, run.layout, run.tokenizer
    start_batch_calculator(cfg, layout)
    model = build_ddp_model(cfg, layout, run.plan, tokenizer.vocab_size)
    optimizer, scheduler = build_optimizer(cfg, model)
    logger.info("model: %s parameters on this rank (TP x PP shard), padded vocabulary %d",
                f"{count_parameters(model):,}", padded_vocab_size(tokenizer.vocab_size, cfg))

    train_ds, valid_ds, _ = datasets_fn(cfg, tokenizer)
    # Load last: it restores the RNG states, and nothing may draw random numbers between
    # the restore and the first step, or a resumed run would diverge from an uninterrupted one.
    state = TrainState()
    load(cfg, layout, model, optimizer, scheduler, state, tokenizer.vocab_size)
    ctx = StepContext.of(run)
    train_data = training_stream(cfg, layout, train_ds, state.consumed_train_samples, ctx.document_masks)
    validation = Validation(cfg, ctx, valid_ds)
    metrics = MetricsLogger(
        cfg,
        flops_per_iteration=training_flops_per_iteration(cfg, padded_vocab_size(tokenizer.vocab_size, cfg)),
        world_size=layout.world_size,
        peak_tflops=device_peak_tflops(cfg),
    )
    # The entry point read the datasets' record once.
    saver = Saver(cfg, layout, prefix=run.dataset, vocab_size=tokenizer.vocab_size)
    hooks = TrainingHooks(cfg, state.iteration)  # --manual-gc, --empty-unused-memory-level, --profile
    start_time = time.time()
    exit_reason = None

    logger.info("training for %d iterations from iteration %d", cfg.training.train_iters, state.iteration)
    # The step clock stops when the device has finished the step's kernels (the optimizer's
    # included), not when the host has queued them: step_ms feeds the benchmarks' MFU.
    sync = torch.cuda.synchronize if run.plan.device == "cuda" else (lambda: None)
    while state.iteration < cfg.training.train_iters:
        # The step's global batch follows the samples consumed so far: after a resume the
        # checkpoint's count re-synchronises the ramp-up here, before the first step.
        update_num_microbatches(state.consumed_train_samples, consistency_check=True)
        hooks.before_step(state.iteration)
        step_start = time.perf_counter()
        result = train_step(cfg, ctx, train_data, get_num_microbatches(), model, optimizer, scheduler,
                            iteration=state.iteration + 1)
        sync()
        result.step_ms = 1000 * (time.perf_counter() - step_start)
        result.global_batch_size = get_current_global_batch_size()
        state.iteration += 1
        state.consumed_train_samples += result.global_batch_size
        _track_nonfinite(cfg, state, result)
        saver.maybe_finalize_async()  # publishes a finished --async-save without waiting
        metrics.on_step(state.iteration, state.consumed_train_samples, result, scheduler.get_lr(optimizer.param_groups[0]))
        hooks.after_step(state.iteration)

        with metrics.paused():  # throughput counts training only, as Megatron-LM's timers
            if _due(state.iteration, cfg.training.eval_interval):
                with hooks.evaluation():
                    validation.run(model, state, metrics)
            exit_reason = _exit_reason(cfg, state, start_time, saver)
            if exit_reason is not None or _due(state.iteration, cfg.checkpoint.save_interval):
                save_checkpoint(cfg, saver, model, optimizer, scheduler, state)
        if exit_reason is not None:
            break

    if exit_reason is None:
        if cfg.training.eval_interval and not _due(state.iteration, cfg.training.eval_interval):
            with hooks.evaluation():
                validation.run(model, state, metrics)
        if cfg.checkpoint.save and not _due(state.iteration, cfg.checkpoint.save_interval):
            save_checkpoint(cfg, saver, model, optimizer, scheduler, state)
    saver.finalize()
    train_data.close()
    validation.close()
    metrics.close()
    hooks.close()
    destroy_num_microbatches_calculator()
    state.history["exit_reason"] = exit_reason or "done"
    return state


def save_checkpoint(cfg: Config, saver, model, optimizer, scheduler, state: TrainState) -> None:
    """With overlapped parameter all-gathers, the gather of the last step's update is still
    pending (it normally overlaps the next forward): finish it first, or the checkpoint would
    mix step N and step N-1 weights (Megatron-LM's ``force_param_sync``)."""
    if cfg.optimizer.overlap_param_gather:
        for chunk in model:
            chunk.start_param_sync(force_sync=True)
    saver.save(model, optimizer, scheduler, state)


class Validation:
    """``--eval-iters`` global batches of the validation split per evaluation, from one
    persistent loader opened at the first evaluation; each evaluation continues where the
    previous one stopped (``data.loader.ValidationSampler``)."""

    def __init__(self, cfg: Config, ctx: StepContext, dataset) -> None:
        self.cfg, self.ctx, self.dataset = cfg, ctx, dataset
        self.samples = samples_per_evaluation(cfg, len(dataset)) if dataset is not None else 0
        self.data = None

    def run(self, model, state: TrainState, metrics: MetricsLogger) -> dict:
        if self.samples == 0:
            return {}
        if self.data is None:
            self.data = validation_stream(self.cfg, self.ctx.layout, self.dataset, state.consumed_valid_samples,
                                          self.ctx.document_masks)
        iters = self.samples // self.cfg.training.global_batch_size
        totals = evaluate(self.cfg, self.ctx, self.data, model, num_microbatches(self.cfg, self.ctx.layout), iters)
        state.consumed_valid_samples += self.samples
        return metrics.on_eval(state.iteration, totals)

    def close(self) -> None:
        if self.data is not None:
            self.data.close()


def _due(iteration: int, interval) -> bool:
    return bool(interval) and iteration % interval == 0


def _track_nonfinite(cfg: Config, state: TrainState, result) -> None:
    if not result.skipped:
        state.consecutive_nonfinite = 0
        return
    state.skipped_iterations += 1
    if result.overflow:  # --fp16: the loss scale backs off, as Megatron-LM's skipped iterations
        logger.warning("iteration %d skipped: FP16 gradient overflow, loss scale now %g", state.iteration,
                       result.loss_scale)
        return
    state.consecutive_nonfinite += 1
    logger.warning("iteration %d skipped: non-finite loss or gradient (%d in a row)",
                   state.iteration, state.consecutive_nonfinite)
    if state.consecutive_nonfinite >= cfg.training.skip_nan_iterations:
        raise NonFiniteLossError(
            f"{state.consecutive_nonfinite} consecutive iterations had a NaN/Inf loss or gradient "
            f"(limit --skip-nan-iterations {cfg.training.skip_nan_iterations}); stopping at iteration "
            f"{state.iteration}. Lower --lr, raise --lr-warmup-iters or check the data.")


def _exit_reason(cfg: Config, state: TrainState, start_time: float, saver) -> str | None:
    """Why the loop should stop after this iteration (the caller saves first), or None."""
    t = cfg.training
    if saver.preemption_requested():
        return "signal"
    if t.exit_interval and state.iteration % t.exit_interval == 0:
        return "exit-interval"
    if t.exit_duration_in_mins is not None:
        elapsed = torch.tensor([(time.time() - start_time) / 60.0], device=current_device())  # NCCL: a CUDA tensor
        torch.distributed.all_reduce(elapsed, op=torch.distributed.ReduceOp.MAX)  # all ranks agree
        if elapsed.item() > t.exit_duration_in_mins:
            return "exit-duration"
    return None
