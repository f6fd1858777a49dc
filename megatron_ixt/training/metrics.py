"""The per-interval metrics line, TensorBoard scalars and a JSON-lines log.

Losses live on the last pipeline stage, so, as in Megatron-LM, the *last* rank logs
(it holds every loss after the data-parallel reduction), and only it writes TensorBoard.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Optional

import psutil
import torch

logger = logging.getLogger("megatron_ixt")


def is_logging_rank() -> bool:
    return torch.distributed.get_rank() == torch.distributed.get_world_size() - 1


def memory_gib() -> float:
    """Peak allocated GPU memory, or this process's resident memory on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return psutil.Process().memory_info().rss / 2**30


def memory_text() -> str:
    return f"{memory_gib():.2f} GiB ({'max alloc' if torch.cuda.is_available() else 'rss'})"


class MetricsLogger:
    """Accumulates losses between log intervals and prints one line per interval:
    iteration, consumed samples, ms/iter, tokens/s, TFLOP/s per device, MFU (GPU),
    learning rate, losses, grad norm, skipped iterations, memory."""

    def __init__(self, cfg, flops_per_iteration: float, world_size: int, peak_tflops: Optional[float]) -> None:
        self.cfg = cfg
        self.flops_per_iteration = flops_per_iteration
        self.world_size = world_size
        self.peak_tflops = peak_tflops
        self.active = is_logging_rank()
        self.writer = None
        self.jsonl = None
        if self.active and cfg.logging.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=cfg.logging.tensorboard_dir)
        if self.active and cfg.logging.log_file:
            os.makedirs(os.path.dirname(os.path.abspath(cfg.logging.log_file)), exist_ok=True)
            self.jsonl = open(cfg.logging.log_file, "a", buffering=1)
        self._reset()

    def _reset(self) -> None:
        self.totals: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.skipped = 0
        self.interval_start = time.perf_counter()
        self.paused_seconds = 0.0

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside (evaluation, checkpoint saves) is left out of ms/iter and tokens/s."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused_seconds += time.perf_counter() - start

    def record(self, fields: dict) -> None:
        """One JSON line (every iteration: tests and plots read these)."""
        if self.jsonl:
            self.jsonl.write(json.dumps(fields) + "\n")

    def on_step(self, iteration: int, consumed_samples: int, result, lr: float) -> None:
        if not self.active:
            return
        self.steps += 1
        self.skipped += int(result.skipped)
        for name, value in result.reports.items():
            self.totals[name] = self.totals.get(name, 0) + value
        losses = {k: (v[0] / v[1]).item() for k, v in result.reports.items() if v[1] > 0}
        self.record({"iteration": iteration, "consumed_samples": consumed_samples, "lr": lr,
                     "grad_norm": result.grad_norm, "skipped": result.skipped,
                     "step_ms": round(result.step_ms, 3), "mem_gib": round(memory_gib(), 3), **losses})
        if iteration % self.cfg.logging.log_interval:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the interval ends when its kernels have finished
        elapsed = time.perf_counter() - self.interval_start - self.paused_seconds
        ms_per_iter = 1000 * elapsed / self.steps
        tokens_per_s = self.cfg.training.global_batch_size * self.cfg.model.seq_length * self.steps / elapsed
        tflops = self.flops_per_iteration / (ms_per_iter / 1000) / self.world_size / 1e12
        parts = [
            f"iteration {iteration:6d}/{self.cfg.training.train_iters}",
            f"consumed samples {consumed_samples}",
            f"ms/iter {ms_per_iter:.1f}",
            f"tokens/s {tokens_per_s:,.0f}",
            f"TFLOP/s/device {tflops:.3f}",
        ]
        if self.peak_tflops:
            parts.append(f"MFU {100 * tflops / self.peak_tflops:.1f}%")
        parts.append(f"lr {lr:.3e}")
        means = {k: (v[0] / v[1]).item() for k, v in self.totals.items() if v[1] > 0 and k != "orphan text loss"}
        parts += [f"{name} {value:.4f}" for name, value in means.items()]
        if self.cfg.data.sft and "lm loss" in self.totals:
            # SFT: only the assistant tokens train; the rest is prompt, feedback and padding.
            share = (self.totals["lm loss"][1] / (self.cfg.training.global_batch_size * self.cfg.model.seq_length
                                                 * self.steps)).item()
            parts.append(f"tokens in loss {100 * share:.1f}%")
            means["loss_token_share"] = share
        elif "orphan text loss" in self.totals and self.totals["text loss"][1] > 0:
            # Share of trained text tokens whose document's prefix is not in the sample.
            share = (self.totals["orphan text loss"][1] / self.totals["text loss"][1]).item()
            parts.append(f"text w/o prefix in view {100 * share:.1f}%")
            means["text_without_prefix_share"] = share
        if result.grad_norm is not None:
            parts.append(f"grad norm {result.grad_norm:.3f}")
        parts += [f"skipped {self.skipped}", f"mem {memory_text()}"]
        logger.info(" | ".join(parts))
        if self.writer:
            scalars = {"lr": lr, "ms_per_iter": ms_per_iter, "tokens_per_s": tokens_per_s,
                       "tflops_per_device": tflops, "skipped": self.skipped, **means}
            if result.grad_norm is not None:
                scalars["grad_norm"] = result.grad_norm
            for name, value in scalars.items():
                self.writer.add_scalar(f"train/{name.replace(' ', '_')}", value, iteration)
            self.writer.flush()
        self._reset()

    def on_eval(self, iteration: int, totals: dict, split: str = "validation") -> dict:
        means = {k: (v[0] / v[1]).item() for k, v in totals.items() if v[1] > 0}
        if self.active and means:
            logger.info(f"{split} at iteration {iteration} | "
                        + " | ".join(f"{k} {v:.4f}" for k, v in means.items()))
            self.record({"iteration": iteration, "split": split, **means})
            if self.writer:
                for name, value in means.items():
                    self.writer.add_scalar(f"{split}/{name.replace(' ', '_')}", value, iteration)
                self.writer.flush()
        return means

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        if self.jsonl:
            self.jsonl.close()
