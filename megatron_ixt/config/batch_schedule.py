"""The global batch of every step and the length of a sample-based run, as Megatron-LM
derives them from ``--train-samples`` and ``--rampup-batch-size`` with megatron-core's
micro-batch calculator (``megatron.core.num_microbatches_calculator``).

The batch of a step depends only on the samples consumed before it: with
``--rampup-batch-size START INCREMENT SAMPLES`` it is ``START + k x INCREMENT`` after
``k x SAMPLES / ((GBS - START) / INCREMENT)`` samples, and ``--global-batch-size`` once more
than ``SAMPLES`` samples are consumed. So a resumed run, given its consumed samples, takes
exactly the batches an uninterrupted one takes. The functions here use a calculator of their
own (the process-wide one is the training loop's) and need no process group.
``schedule_steps`` gives the learning-rate scheduler its lengths in samples, for training
and for the resume check that compares a checkpoint's schedule with this run's.
"""

from __future__ import annotations

import functools
import math

from typing import Iterator

from megatron_ixt.config.cli import ConfigError
from megatron_ixt.config.schema import Config, TrainingConfig


def calculator(t: TrainingConfig, data_parallel_size: int = 1):
    """megatron-core's calculator for ``t`` (ramp-up or constant). Its global batch sizes do
    not depend on ``data_parallel_size``, which only enters its micro-batch counts.
    Megatron-LM's ramp-up rules as one-line errors, before the calculator's assertions."""
    # Deferred: importing megatron.core costs seconds, and the config package is imported by
    # tools that never train (the data tools start without torch).
    from megatron.core.num_microbatches_calculator import (ConstantNumMicroBatchesCalculator,
                                                           RampupBatchsizeNumMicroBatchesCalculator)

    mbs_dp = t.micro_batch_size * data_parallel_size
    gbs = t.global_batch_size
    if t.rampup_batch_size is None:
        return ConstantNumMicroBatchesCalculator(gbs, t.micro_batch_size, data_parallel_size, False, rank=-1)
    start, increment, samples = (int(v) for v in t.rampup_batch_size)
    shown = f"--rampup-batch-size {start} {increment} {samples}"
    if start < 1 or increment < 1 or samples < 1:
        raise ConfigError(f"{shown}: START, INCREMENT and SAMPLES must be >= 1")
    if start >= gbs:
        raise ConfigError(f"{shown}: START ({start}) must be below --global-batch-size ({gbs}), which the ramp-up "
                          "grows to")
    if (gbs - start) % increment:
        raise ConfigError(f"{shown}: --global-batch-size ({gbs}) - START ({start}) = {gbs - start} is not "
                          f"divisible by INCREMENT ({increment})")
    for name, value in (("START", start), ("INCREMENT", increment)):
        if value % mbs_dp:
            raise ConfigError(f"{shown}: {name} ({value}) is not divisible by --micro-batch-size "
                              f"({t.micro_batch_size}) x data-parallel size ({data_parallel_size}): every step's "
                              "global batch must be whole micro-batches on every data-parallel rank")
    try:
        return RampupBatchsizeNumMicroBatchesCalculator(gbs, t.micro_batch_size, data_parallel_size, False, -1,
                                                        start, increment, samples)
    except AssertionError as error:  # a rule megatron-core adds that the checks above miss
        raise ConfigError(f"{shown}: {error}") from None


def global_batch_sizes(t: TrainingConfig, consumed_samples: int = 0) -> Iterator[int]:
    """The global batch of each step from ``consumed_samples`` on, without end."""
    calc = calculator(t)
    while True:
        calc.update(consumed_samples, consistency_check=False)
        size = calc.get_current_global_batch_size()
        yield size
        consumed_samples += size


def samples_for_iterations(t: TrainingConfig, iterations: int) -> int:
    """The samples ``iterations`` steps consume from the start. Steps of one ramp-up phase
    (one batch size) are counted in one stride: a 175B ramp-up has ~20,000 steps, each a
    calculator update."""
    if t.rampup_batch_size is None:
        return iterations * t.global_batch_size
    calc = calculator(t)
    consumed = done = 0
    while done < iterations:
        calc.update(consumed, consistency_check=False)
        size = calc.get_current_global_batch_size()
        if size == t.global_batch_size:  # the ramp-up is over: the rest of the steps are full
            return consumed + (iterations - done) * size
        # The batch changes once the consumed samples reach the next increment (or pass the
        # ramp-up); stop one step short of it and let the calculator take the boundary itself.
        boundary = min((int(consumed / calc.rampup_samples_per_increment) + 1) * calc.rampup_samples_per_increment,
                       calc.ramup_samples + 1)
        steps = min(max(1, math.ceil((boundary - consumed) / size) - 1), iterations - done)
        consumed += steps * size
        done += steps
    return consumed


def iterations_for_samples(t: TrainingConfig) -> int:
    """The steps of a ``--train-samples`` run: Megatron-LM's ``update_train_iters``. During
    the ramp-up it counts steps while the consumed samples are at most the ramp-up's and
    ``--train-samples``, then whole global batches of the rest (a partial last batch is
    dropped). The run then stops on this step count, as Megatron-LM's loop does."""
    if t.rampup_batch_size is None:
        return t.train_samples // t.global_batch_size
    calc, rampup_samples = calculator(t), int(t.rampup_batch_size[2])
    iterations = consumed = 0
    while consumed <= rampup_samples and consumed <= t.train_samples:
        calc.update(consumed, consistency_check=False)
        consumed += calc.get_current_global_batch_size()
        iterations += 1
    if t.train_samples > consumed:
        iterations += (t.train_samples - consumed) // t.global_batch_size
    return iterations


def schedule_steps(cfg: Config) -> dict:
    """The scheduler's lengths in samples, its step unit (the loop steps it by each step's
    global batch), as Megatron-LM's ``get_optimizer_param_scheduler`` sets them: iteration
    flags times --global-batch-size, or the --train-samples flags as they are. Under
    --rampup-batch-size with --train-iters (which Megatron-LM refuses), an iteration flag
    counts the samples its steps consume, so that the decay ends at --lr-decay-iters."""
    o, t = cfg.optimizer, cfg.training
    if t.train_samples is None:
        samples = functools.partial(samples_for_iterations, t)
        decay = samples(o.lr_decay_iters)
        warmup = o.lr_warmup_fraction * decay if o.lr_warmup_fraction is not None else samples(o.lr_warmup_iters)
        return {"lr_warmup_steps": warmup, "lr_decay_steps": decay, "wd_incr_steps": samples(t.train_iters),
                "wsd_decay_steps": samples(o.lr_wsd_decay_iters) if o.lr_wsd_decay_iters else None}
    warmup = o.lr_warmup_samples
    if o.lr_warmup_fraction is not None:
        warmup = o.lr_warmup_fraction * o.lr_decay_samples
    return {"lr_warmup_steps": warmup, "lr_decay_steps": o.lr_decay_samples, "wd_incr_steps": t.train_samples,
            "wsd_decay_steps": o.lr_wsd_decay_samples}
