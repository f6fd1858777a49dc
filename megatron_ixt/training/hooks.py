"""Operations around the training loop, as Megatron-LM's ``training.py`` does them: manual
garbage collection (``--manual-gc``), releasing the CUDA caching allocator's unused memory
(``--empty-unused-memory-level``) and profiling (``--profile``).

The loop calls :class:`TrainingHooks` four times: ``before_step`` and ``after_step`` around
each training step, ``evaluation()`` around each validation pass and ``close()`` at the end.
Step numbers are 1-based, as in the log line: ``before_step(i)`` precedes step ``i + 1``.
"""

from __future__ import annotations

import contextlib
import gc
import logging

import torch

from megatron_ixt.config.schema import Config

logger = logging.getLogger("megatron_ixt")


def empty_unused_memory(cfg: Config, level: int) -> None:
    """``torch.cuda.empty_cache()`` where ``--empty-unused-memory-level`` reaches ``level``:
    Megatron-LM releases at level 1 after each forward-backward (training and evaluation) and
    at level 2 also after the optimizer step, to reduce fragmentation. The CPU allocator has no
    cache to release, so this is a no-op there."""
    if cfg.training.empty_unused_memory_level >= level and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def profiler_schedule(start: int, end: int, resumed_at: int) -> "dict | None":
    """``torch.profiler.schedule``'s wait/warmup/active for Megatron-LM's window (record steps
    ``start`` to ``end - 1``) in a run resumed after ``resumed_at`` steps, or None when the
    window is over. The schedule counts ``prof.step()`` calls from this run's start, so the
    window shifts by the steps already done, and a run resumed inside it records at once."""
    start, end = max(start - resumed_at, 0), end - resumed_at
    if end - 1 < max(start, 1):  # schedule step 0 is the time before the first training step
        return None
    return {"wait": max(start - 1, 0), "warmup": 1 if start > 0 else 0, "active": end - start}


class Profiler:
    """``--profile`` on one of ``--profile-ranks``.

    With ``--use-pytorch-profiler``: ``torch.profiler`` with Megatron-LM's schedule, stepped
    before every step, which records steps ``--profile-step-start`` to ``--profile-step-end - 1``
    and writes a trace for TensorBoard under ``--tensorboard-dir``. Without it: the capture
    range of ``nsys profile --capture-range=cudaProfilerApi`` (``cudaProfilerStart`` before step
    ``--profile-step-start + 1``, ``cudaProfilerStop`` after step ``--profile-step-end``) with
    NVTX ranges for the autograd ops, as Megatron-LM opens it.

    A run resumed at step R is profiled over the part of the window after R; Megatron-LM counts
    the torch.profiler schedule from the start of the run instead, which would profile
    ``--profile-step-start`` steps after the resume."""

    def __init__(self, cfg: Config, start_iteration: int) -> None:
        lg = cfg.logging
        self.start, self.end = lg.profile_step_start, lg.profile_step_end
        self.torch_profiler = None
        self.nsys = False  # whether this rank opens the nsys capture range
        self.capturing = False
        self.nvtx = None
        if not lg.profile or _rank() not in lg.profile_ranks:
            return
        if not lg.use_pytorch_profiler:
            if torch.cuda.is_available():
                self.nsys = True
            else:
                logger.warning("--profile without --use-pytorch-profiler opens an nsys capture range, which "
                               "needs CUDA: nothing is profiled on CPU (add --use-pytorch-profiler for a "
                               "torch.profiler trace)")
            return
        schedule = profiler_schedule(self.start, self.end, start_iteration)
        if schedule is None:
            logger.info("--profile: steps %d-%d were done before this run resumed at step %d: not profiling",
                        self.start, self.end - 1, start_iteration)
            return
        self.torch_profiler = torch.profiler.profile(
            schedule=torch.profiler.schedule(**schedule, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(lg.tensorboard_dir),
            record_shapes=True,
            with_stack=True,
        )
        self.torch_profiler.start()
        logger.info("--profile: torch.profiler records steps %d-%d into %s", max(self.start, start_iteration + 1),
                    self.end - 1, lg.tensorboard_dir)

    def before_step(self, iteration: int) -> None:
        if self.torch_profiler is not None:
            self.torch_profiler.step()
        elif self.nsys and not self.capturing and self.start <= iteration < self.end:
            torch.cuda.check_error(torch.cuda.cudart().cudaProfilerStart())
            self.nvtx = torch.autograd.profiler.emit_nvtx(record_shapes=True)
            self.nvtx.__enter__()
            self.capturing = True

    def after_step(self, iteration: int) -> None:
        if iteration == self.end:
            self.stop()

    def stop(self) -> None:
        """Ends profiling; a run that stops inside the window keeps what was recorded."""
        if self.torch_profiler is not None:
            self.torch_profiler.stop()
            self.torch_profiler = None
        if self.capturing:
            torch.cuda.check_error(torch.cuda.cudart().cudaProfilerStop())
            self.nvtx.__exit__(None, None, None)
            self.capturing, self.nvtx = False, None


class TrainingHooks:
    """What the loop calls around its steps and evaluations (see the module docstring)."""

    def __init__(self, cfg: Config, start_iteration: int) -> None:
        self.cfg = cfg
        self.manual_gc = cfg.training.manual_gc
        if self.manual_gc:
            # Megatron-LM's reason: the automatic collector runs at different moments on each
            # rank, and a rank that collects delays every collective the others wait in; a
            # collection at the same step on all ranks costs each rank once.
            gc.disable()
            gc.collect()
        self.profiler = Profiler(cfg, start_iteration)

    def before_step(self, iteration: int) -> None:
        """Before step ``iteration + 1``."""
        self.profiler.before_step(iteration)

    def after_step(self, iteration: int) -> None:
        """After step ``iteration`` (its metrics logged)."""
        empty_unused_memory(self.cfg, level=2)
        self.profiler.after_step(iteration)
        interval = self.cfg.training.manual_gc_interval
        if self.manual_gc and interval and iteration % interval == 0:
            gc.collect()

    @contextlib.contextmanager
    def evaluation(self):
        """Around a validation pass: with ``--manual-gc-eval``, collect everything before, and
        after it only the youngest generation, which holds what the evaluation created."""
        collect = self.manual_gc and self.cfg.training.manual_gc_eval
        if collect:
            gc.collect()
        yield
        if collect:
            gc.collect(generation=0)

    def close(self) -> None:
        self.profiler.stop()
        if self.manual_gc:
            gc.enable()
