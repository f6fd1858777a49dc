"""Saving: what a checkpoint holds (``checkpoint.contents``), written by every rank with megatron-core's
``dist_checkpointing`` (``torch_dist``), then published by rank 0 (``files.publish``).

Because the format is sharded by tensor *names and global shapes*, a checkpoint saved with
one TP/PP layout loads into another (megatron-core reshards on load).

Every checkpoint records the prefix template and the quality thresholds of the IXT data it
was trained on (``data.datasets.dataset_record``), so that the inference tools condition on
the prefixes the model saw, without being told again.

A preemption signal (``runtime.lifecycle``) makes the training loop save, then exit.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Optional

import torch
from megatron.core import dist_checkpointing

from megatron_ixt.checkpoint import files
from megatron_ixt.checkpoint.contents import CHECKPOINT_VERSION, model_sharded_state_dict, padded_vocab, rng_state
from megatron_ixt.config.cli import ConfigError
from megatron_ixt.config.schema import Config
from megatron_ixt.runtime import faults, lifecycle
from megatron_ixt.runtime.distributed import ParallelLayout

logger = logging.getLogger("megatron_ixt")


def lock_save_folder(cfg: Config) -> None:
    """Collective: rank 0 takes the exclusive lock of ``--save`` (one lock for the folder,
    which every node shares) before anything writes there; every rank raises the same
    :class:`ConfigError`, naming the holder, while another live run holds it."""
    if not cfg.checkpoint.save:
        return
    error = None
    if torch.distributed.get_rank() == 0:
        try:
            lifecycle.lock_save_folder(cfg.checkpoint.save)
        except lifecycle.SaveFolderLocked as locked:
            error = str(locked)
    verdict = [error]
    torch.distributed.broadcast_object_list(verdict, src=0)
    if verdict[0]:
        raise ConfigError(verdict[0])


class Saver:
    """Saves checkpoints into ``--save``; while it saves there, a preemption signal asks the
    training loop to save and exit (``runtime.lifecycle``). ``prefix`` is the record of the
    training data (``data.datasets.dataset_record``, read once by the entry point; None for
    mock data and plain GPT datasets); ``vocab_size`` the tokenizer's vocabulary before padding,
    which a run loading the checkpoint must have (the padding it may change)."""

    def __init__(self, cfg: Config, layout: ParallelLayout, prefix: Optional[dict], vocab_size: int) -> None:
        self.cfg = cfg
        self.layout = layout
        self.root = cfg.checkpoint.save
        self._async_queue = None
        self.prefix = prefix
        self.vocab_size = vocab_size
        if self.root:
            if torch.distributed.get_rank() == 0:
                os.makedirs(self.root, exist_ok=True)
            files.clean_partial_checkpoints(self.root)
            lifecycle.handle_preemption_signals()
        if cfg.checkpoint.async_save:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self._async_queue = AsyncCallsQueue()

    def preemption_requested(self) -> bool:
        """Collective: true on all ranks if any rank received a preemption signal. Never
        without ``--save``: no handler is installed then, a signal ends the run at once."""
        return bool(self.root) and lifecycle.preemption_requested()

    @property
    def signal_received(self) -> Optional[int]:
        return lifecycle.preemption_signal() if self.root else None

    def save(self, model, optimizer, scheduler, state) -> Optional[str]:
        if not self.root:
            return None
        if self._async_queue is not None:
            self._async_queue.maybe_finalize_async_calls(blocking=True)  # one save in flight at a time
        start = time.perf_counter()
        partial = files.partial_folder(self.root, state.iteration)
        if torch.distributed.get_rank() == 0:
            shutil.rmtree(partial, ignore_errors=True)
            os.makedirs(partial)
        torch.distributed.barrier()

        sharded = model_sharded_state_dict(model)
        if optimizer is not None:
            sharded["optimizer"] = optimizer.sharded_state_dict(sharded)
        sharded.update({
            "opt_param_scheduler": scheduler.state_dict(),
            "iteration": state.iteration,
            "train_state": {k: v for k, v in vars(state).items() if k != "history"},
            "config": self.cfg.to_dict(),
            "layout": self.layout.checkpoint_record(),
            "padded_vocab_size": padded_vocab(model),
            "vocab_size": self.vocab_size,
            "rng_state": rng_state(self.layout),
            "ixt_prefix": self.prefix,
            "checkpoint_version": CHECKPOINT_VERSION,
        })
        with lifecycle.preemption_signals_blocked():  # its writer processes (runtime.lifecycle)
            request = dist_checkpointing.save(sharded, partial, async_sharded_save=self._async_queue is not None)

        def publish() -> None:
            rank = torch.distributed.get_rank()
            faults.maybe_kill("kill-before-publish", state.iteration, rank)
            if rank == 0:
                template_source = ((self.prefix or {}).get("template") or {}).get("source", "")
                final = files.publish(self.root, state.iteration, self.cfg.to_dict(), template_source,
                                      lambda point: faults.maybe_kill(point, state.iteration, rank))
                self._prune()
                size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(final) for f in fs)
                logger.info("saved checkpoint %s (%.1f MiB) in %.2f s", final, size / 2**20,
                            time.perf_counter() - start)
            torch.distributed.barrier()

        if request is None:
            publish()
        else:
            request.add_finalize_fn(publish)
            with lifecycle.preemption_signals_blocked():  # the process that writes in the background
                self._async_queue.schedule_async_request(request)
        return files.checkpoint_name(self.root, state.iteration)

    def _prune(self) -> None:
        keep = self.cfg.checkpoint.keep_last_n
        if not keep:
            return
        iters = sorted(n for n in os.listdir(self.root) if n.startswith("iter_") and n[5:].isdigit())
        for name in iters[:-keep]:
            shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    def finalize(self) -> None:
        """Every save published; after the save a signal asked for, further signals are ignored."""
        if self._async_queue is not None:
            self._async_queue.maybe_finalize_async_calls(blocking=True)
            self._async_queue.close()
        if self.signal_received is not None:
            lifecycle.ignore_preemption_signals()

    def maybe_finalize_async(self) -> None:
        if self._async_queue is not None:
            self._async_queue.maybe_finalize_async_calls(blocking=False)
