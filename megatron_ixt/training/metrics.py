"""The per-interval metrics line, TensorBoard scalars and a JSON-lines log.

Losses live on the last pipeline stage, so, as in Megatron-LM, the *last* rank logs
(it holds every loss after the data-parallel reduction), and only it writes TensorBoard and,
with ``--wandb-project``, Weights & Biases (the same scalars under the same tags).
"""

from __future__ import annotations

import contextlib
import json
import logging
import netrc
import os
import socket
import time
import urllib.parse
from typing import Optional

import psutil
import torch

from megatron_ixt.config.cli import ConfigError

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
        self.wandb = open_wandb(cfg) if self.active and cfg.logging.wandb_project else None
        # FLOPs scale with the samples of each step, which the loop counts (the global batch
        # may ramp up), not with a fixed --global-batch-size.
        self.flops_per_sample = flops_per_iteration / cfg.training.global_batch_size
        self._reset()

    def _reset(self) -> None:
        self.totals: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.samples = 0
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

    def tflops_per_device(self, samples: int, seconds: float) -> float:
        """Model TFLOP/s per device (Megatron-LM's "throughput per GPU")."""
        return self.flops_per_sample * samples / seconds / self.world_size / 1e12

    def on_step(self, iteration: int, consumed_samples: int, result, lr: float) -> None:
        if not self.active:
            return
        self.steps += 1
        step_samples = result.global_batch_size
        self.samples += step_samples
        self.skipped += int(result.skipped)
        for name, value in result.reports.items():
            self.totals[name] = self.totals.get(name, 0) + value
        losses = {k: (v[0] / v[1]).item() for k, v in result.reports.items() if v[1] > 0}
        self.record({"iteration": iteration, "consumed_samples": consumed_samples,
                     "global_batch_size": step_samples, "lr": lr,
                     "grad_norm": result.grad_norm, "skipped": result.skipped,
                     "step_ms": round(result.step_ms, 3), "mem_gib": round(memory_gib(), 3), **losses,
                     **({"throughput": self.tflops_per_device(step_samples, result.step_ms / 1000)}
                        if self.cfg.logging.log_throughput else {}),
                     **({"loss scale": result.loss_scale} if result.loss_scale is not None else {})})
        if iteration % self.cfg.logging.log_interval:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the interval ends when its kernels have finished
        elapsed = time.perf_counter() - self.interval_start - self.paused_seconds
        ms_per_iter = 1000 * elapsed / self.steps
        tokens_per_s = self.samples * self.cfg.model.seq_length / elapsed
        tflops = self.tflops_per_device(self.samples, elapsed)
        parts = [
            f"iteration {iteration:6d}/{self.cfg.training.train_iters}",
            f"consumed samples {consumed_samples}",
            f"ms/iter {ms_per_iter:.1f}",
            f"tokens/s {tokens_per_s:,.0f}",
        ]
        if self.cfg.logging.log_throughput:  # Megatron-LM's field, as its log parsers expect it
            parts.append(f"throughput per GPU (TFLOP/s/GPU): {tflops:.{1 if tflops >= 1 else 4}f}")
        else:
            parts.append(f"TFLOP/s/device {tflops:.3f}")
        if self.peak_tflops:
            parts.append(f"MFU {100 * tflops / self.peak_tflops:.1f}%")
        parts.append(f"lr {lr:.3e}")
        if self.cfg.training.rampup_batch_size:  # Megatron-LM's field, while the batch may ramp up
            parts.append(f"global batch size {step_samples}")
        means = {k: (v[0] / v[1]).item() for k, v in self.totals.items() if v[1] > 0 and k != "orphan text loss"}
        parts += [f"{name} {value:.4f}" for name, value in means.items()]
        if self.cfg.data.sft and "lm loss" in self.totals:
            # SFT: only the assistant tokens train; the rest is prompt, feedback and padding.
            share = (self.totals["lm loss"][1] / (self.samples * self.cfg.model.seq_length)).item()
            parts.append(f"tokens in loss {100 * share:.1f}%")
            means["loss_token_share"] = share
        elif "orphan text loss" in self.totals and self.totals["text loss"][1] > 0:
            # Share of trained text tokens whose document's prefix is not in the sample.
            share = (self.totals["orphan text loss"][1] / self.totals["text loss"][1]).item()
            parts.append(f"text w/o prefix in view {100 * share:.1f}%")
            means["text_without_prefix_share"] = share
        if result.grad_norm is not None:
            parts.append(f"grad norm {result.grad_norm:.3f}")
        if result.loss_scale is not None:  # --fp16
            parts.append(f"loss scale {result.loss_scale:.1f}")
        parts += [f"skipped {self.skipped}", f"mem {memory_text()}"]
        logger.info(" | ".join(parts))
        scalars = {"lr": lr, "ms_per_iter": ms_per_iter, "tokens_per_s": tokens_per_s,
                   "tflops_per_device": tflops, "skipped": self.skipped, **means}
        if result.grad_norm is not None:
            scalars["grad_norm"] = result.grad_norm
        tagged = {f"train/{name.replace(' ', '_')}": value for name, value in scalars.items()}
        if self.cfg.logging.log_throughput:
            tagged["throughput"] = tflops  # Megatron-LM's tag
        self.publish(tagged, iteration)
        self._reset()

    def on_eval(self, iteration: int, totals: dict, split: str = "validation") -> dict:
        means = {k: (v[0] / v[1]).item() for k, v in totals.items() if v[1] > 0}
        if self.active and means:
            logger.info(f"{split} at iteration {iteration} | "
                        + " | ".join(f"{k} {v:.4f}" for k, v in means.items()))
            self.record({"iteration": iteration, "split": split, **means})
            self.publish({f"{split}/{name.replace(' ', '_')}": value for name, value in means.items()}, iteration)
        return means

    def publish(self, scalars: dict, iteration: int) -> None:
        """TensorBoard and W&B get the same scalars under the same tags."""
        if self.writer:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, iteration)
            self.writer.flush()
        if self.wandb:
            self.wandb.log(scalars, step=iteration)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        if self.jsonl:
            self.jsonl.close()
        if self.wandb:
            import wandb

            self.wandb.finish()
            wandb.teardown()  # stops wandb's service process now rather than at interpreter exit
            self.wandb = None


def open_wandb(cfg):
    """Megatron-LM's W&B run (``global_vars._set_wandb_writer``): project, entity and name from
    the flags, the run folder under --wandb-save-dir (default --save's wandb/), the resolved
    configuration as the run config (leaf names, which are Megatron-LM's argument names)."""
    try:
        import wandb
    except ImportError as e:
        raise ConfigError("--wandb-project needs the wandb package: pip install 'megatron_ixt[wandb]'") from e
    lg = cfg.logging
    save_dir = lg.wandb_save_dir or os.path.join(cfg.checkpoint.save, "wandb")
    os.makedirs(save_dir, exist_ok=True)
    kwargs = {"dir": save_dir, "project": lg.wandb_project, "name": lg.wandb_exp_name,
              "config": {name: value for section in cfg.to_dict().values() for name, value in section.items()}}
    if lg.wandb_entity:
        kwargs["entity"] = lg.wandb_entity
    reason = wandb_offline_reason()
    if reason:
        kwargs["mode"] = "offline"
        logger.info("W&B: offline, %s; upload the run later with: wandb sync %s", reason,
                    os.path.join(save_dir, "wandb", "offline-run-*"))
    return wandb.init(**kwargs)


def wandb_offline_reason() -> Optional[str]:
    """Why W&B should run offline when the user chose no mode (WANDB_MODE): no API key, or
    a server that cannot be reached (online, wandb.init would retry for 90 s, then fail)."""
    if os.environ.get("WANDB_MODE"):
        return None
    url = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host = url.hostname or "api.wandb.ai"
    if not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE") or _netrc_login(host)):
        return "no API key (set WANDB_API_KEY or run wandb login)"
    try:
        socket.create_connection((host, url.port or (80 if url.scheme == "http" else 443)), timeout=5).close()
    except OSError:
        return f"{host} cannot be reached"
    return None


def _netrc_login(host: str) -> bool:
    """`wandb login` stores the key in ~/.netrc (or $NETRC)."""
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False
