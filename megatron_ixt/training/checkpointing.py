"""Checkpoints: megatron-core ``dist_checkpointing`` (``torch_dist``), saved atomically.

Layout (Megatron-LM's)::

    <save>/iter_0000100/            model + optimizer shards, common.pt, metadata.json
    <save>/iter_0000100/config.yaml the resolved configuration the checkpoint was made with
    <save>/latest_checkpointed_iteration.txt

A save goes to ``iter_0000100.partial`` first. Only when every rank has written its shards
does rank 0 fsync the folder, rename it into place and then replace the ``latest`` marker
(itself written to a temporary file, fsynced and renamed). Re-saving an iteration that
exists (a resumed run that saves the iteration it loaded) first moves the old folder aside
to ``iter_0000100.old``, renames the new one into place, then deletes the old one. A process
killed at any point leaves a complete checkpoint where the marker points: the next start
removes leftover ``.partial`` folders, with a warning, and moves an ``.old`` folder back
when its replacement never arrived.

Every checkpoint records the prefix template and the quality thresholds of the IXT data it
was trained on (from the datasets' ``.meta.json``), so that the inference tools condition
on the prefixes the model saw, without being told again.

Because the format is sharded by tensor *names and global shapes*, a checkpoint saved with
one TP/PP layout loads into another (megatron-core reshards on load).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import random
import shutil
import signal
import time
from typing import Optional

import numpy as np
import torch
import yaml
from megatron.core import dist_checkpointing, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_ixt.config.cli import ConfigError
from megatron_ixt.config.schema import Config
from megatron_ixt.data.datasets import dataset_record
from megatron_ixt.runtime import lifecycle
from megatron_ixt.runtime.distributed import ParallelLayout
from megatron_ixt.runtime.kernels import current_device
from megatron_ixt.training import faults

logger = logging.getLogger("megatron_ixt")

TRACKER_FILE = "latest_checkpointed_iteration.txt"
PARTIAL_SUFFIX = ".partial"
OLD_SUFFIX = ".old"
# A file-based prefix template is copied into each checkpoint folder under this name.
TEMPLATE_FILE = "prefix_template.yaml"
# Exit status after a signal-triggered save: "temporary failure, run me again" (EX_TEMPFAIL),
# distinct from success (0), errors (1) and configuration errors (2).
EXIT_CODE_PREEMPTED = 75
# A second signal later than this after the first means "stop now"; earlier, it is a duplicate.
REPEAT_SIGNAL_GRACE_S = 10.0
# Model fields that change parameter shapes or semantics: a mismatch makes a checkpoint unloadable.
MODEL_SHAPE_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                      "kv_channels", "swiglu", "normalization", "position_embedding_type",
                      "untie_embeddings_and_output_weights", "disable_bias_linear",
                      # Transformer Engine and local layers name their weights differently
                      # (a fused layer norm inside linear_qkv against input_layernorm).
                      "transformer_impl")


def checkpoint_name(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def read_tracker(root: str) -> Optional[int]:
    path = os.path.join(root, TRACKER_FILE)
    if not os.path.isfile(path):
        return None
    text = open(path).read().strip()
    if not text.isdigit():
        raise ConfigError(f"{path}: expected an iteration number, found {text!r}")
    return int(text)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: str) -> None:
    for dirpath, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(dirpath)


def _write_atomic(path: str, text: str, before_rename=None) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if before_rename:
        before_rename()
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def recover_interrupted_saves(root: str) -> list[str]:
    """Undo what an interrupted save left (rank 0 only): remove ``.partial`` folders; move
    an ``.old`` folder (an iteration being re-saved) back into place when its replacement
    never arrived, else remove it. Returns the names acted on. Not collective."""
    acted = []
    if not os.path.isdir(root):
        return acted
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.endswith(PARTIAL_SUFFIX):
            shutil.rmtree(path, ignore_errors=True)
            acted.append(name)
            logger.warning("removed incomplete checkpoint %s (a save was interrupted)", path)
        elif name.endswith(OLD_SUFFIX) and name.startswith("iter_"):
            final = path[:-len(OLD_SUFFIX)]
            if os.path.isdir(final):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.rename(path, final)
                _fsync_dir(root)
                logger.warning("restored checkpoint %s (a re-save of it was interrupted)", final)
            acted.append(name)
    return acted


def clean_partial_checkpoints(root: str) -> list[str]:
    """Collective: rank 0 recovers from interrupted saves, then every rank waits for it.
    Only in a folder whose lock this process holds (:func:`lock_save_folder`): elsewhere a
    ``.partial`` or ``.old`` folder may be a live run's save in flight."""
    if torch.distributed.get_rank() == 0 and not lifecycle.holds_save_folder(root):
        raise RuntimeError(f"{root}: not locked by this run, so its interrupted saves are not its to repair")
    acted = recover_interrupted_saves(root) if torch.distributed.get_rank() == 0 else []
    torch.distributed.barrier()
    return acted


def replace_folder(new: str, final: str, fault=lambda point: None) -> None:
    """Rename ``new`` to ``final``; an existing ``final`` is moved aside first and deleted
    only once the new folder is in place, so ``final`` is always complete or (briefly, and
    repaired by :func:`recover_interrupted_saves`) absent with its ``.old`` twin present.
    ``fault(point)`` is the fault-injection hook between the steps."""
    old = final + OLD_SUFFIX
    if os.path.isdir(final):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        fault("kill-after-aside")
    os.rename(new, final)
    _fsync_dir(os.path.dirname(final) or ".")
    fault("kill-before-old-removed")
    shutil.rmtree(old, ignore_errors=True)


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


def _rng_state(layout: ParallelLayout) -> ShardedObject:
    """Every rank's RNG states, as one sharded object indexed by (pp, tp, dp) rank."""
    state = {
        "random": random.getstate(),
        "np_random": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    shape, offset = layout.rank_grid()
    return ShardedObject("rng_state", state, shape, offset, replica_id=0)


def _restore_rng(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["np_random"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _unwrap(chunk):
    """The GPTModel inside its wrappers (DDP, then Float16Module under BF16; inference tools
    may hold bare models)."""
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


def _model_keys(model) -> list[str]:
    """Keys as Megatron-LM writes them: ``model``, or ``model0``, ``model1``... per virtual stage."""
    return ["model"] if len(model) == 1 else [f"model{i}" for i in range(len(model))]


def model_sharded_state_dict(model) -> dict:
    return {key: _unwrap(chunk).sharded_state_dict() for key, chunk in zip(_model_keys(model), model)}


def load_model_weights(model, loaded: dict) -> None:
    """Copy the model part of a loaded checkpoint into ``model`` (DDP-wrapped or bare chunks)."""
    for key, chunk in zip(_model_keys(model), model):
        _unwrap(chunk).load_state_dict(loaded[key])


def _padded_vocab(model) -> int:
    return _unwrap(model[0]).vocab_size


class Saver:
    """Saves checkpoints and turns SIGTERM/SIGUSR1 into "save, then exit"."""

    def __init__(self, cfg: Config, layout: ParallelLayout) -> None:
        self.cfg = cfg
        self.layout = layout
        self.root = cfg.checkpoint.save
        self._signal_received: Optional[int] = None
        self._signal_time = 0.0
        self._async_queue = None
        self.prefix = dataset_record(cfg)
        if self.root:
            if torch.distributed.get_rank() == 0:
                os.makedirs(self.root, exist_ok=True)
            clean_partial_checkpoints(self.root)
            for sig in lifecycle.PREEMPTION_SIGNALS:
                signal.signal(sig, self._on_signal)
        if cfg.checkpoint.async_save:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self._async_queue = AsyncCallsQueue()

    def _on_signal(self, signum, frame) -> None:
        # Only record it: the loop finishes the current iteration, then saves and exits.
        # A second signal means "now": a rank stuck in a collective (its peer died) must
        # stay killable by its launcher.
        # A repeat within a few seconds is the same request delivered twice (SLURM signals
        # every process of a step, and a launcher may forward it again): ignore it.
        now = time.monotonic()
        if self._signal_received is not None:
            if now - self._signal_time < REPEAT_SIGNAL_GRACE_S:
                return
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self._signal_received = signum
        self._signal_time = now
        logger.warning("received signal %d: saving a checkpoint after this iteration, then exiting", signum)

    def preemption_requested(self) -> bool:
        """Collective: true on all ranks if any rank received the signal (ranks may get it
        at slightly different times; they must all stop at the same iteration)."""
        if not self.root:
            return False
        flag = torch.tensor([1.0 if self._signal_received else 0.0],
                            device=current_device())
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def save(self, model, optimizer, scheduler, state) -> Optional[str]:
        if not self.root:
            return None
        if self._async_queue is not None:
            self._async_queue.maybe_finalize_async_calls(blocking=True)  # one save in flight at a time
        start = time.perf_counter()
        final = checkpoint_name(self.root, state.iteration)
        partial = final + PARTIAL_SUFFIX
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
            "padded_vocab_size": _padded_vocab(model),
            "rng_state": _rng_state(self.layout),
            "ixt_prefix": self.prefix,
            "checkpoint_version": 1,
        })
        request = dist_checkpointing.save(sharded, partial, async_sharded_save=self._async_queue is not None)

        def publish() -> None:
            rank = torch.distributed.get_rank()
            faults.maybe_kill("kill-before-publish", state.iteration, rank)
            if rank == 0:
                with open(os.path.join(partial, "config.yaml"), "w") as f:
                    yaml.safe_dump(self.cfg.to_dict(), f, sort_keys=False)
                template_source = ((self.prefix or {}).get("template") or {}).get("source", "")
                if os.path.isfile(template_source):  # a template file, not a built-in name
                    shutil.copyfile(template_source, os.path.join(partial, TEMPLATE_FILE))
                _fsync_tree(partial)
                replace_folder(partial, final, lambda point: faults.maybe_kill(point, state.iteration, rank))
                faults.maybe_kill("kill-after-rename", state.iteration, rank)
                _write_atomic(os.path.join(self.root, TRACKER_FILE), f"{state.iteration}\n",
                              before_rename=lambda: faults.maybe_kill("kill-before-tracker", state.iteration, rank))
                self._prune()
                size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(final) for f in fs)
                logger.info("saved checkpoint %s (%.1f MiB) in %.2f s", final, size / 2**20,
                            time.perf_counter() - start)
            torch.distributed.barrier()

        if request is None:
            publish()
        else:
            request.add_finalize_fn(publish)
            self._async_queue.schedule_async_request(request)
        return final

    def _prune(self) -> None:
        keep = self.cfg.checkpoint.keep_last_n
        if not keep:
            return
        iters = sorted(n for n in os.listdir(self.root) if n.startswith("iter_") and n[5:].isdigit())
        for name in iters[:-keep]:
            shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    def finalize(self) -> None:
        if self._async_queue is not None:
            self._async_queue.maybe_finalize_async_calls(blocking=True)
            self._async_queue.close()

    def maybe_finalize_async(self) -> None:
        if self._async_queue is not None:
            self._async_queue.maybe_finalize_async_calls(blocking=False)

    @property
    def signal_received(self) -> Optional[int]:
        return self._signal_received


def check_model_compatible(saved: dict, cfg: Config, where: str) -> None:
    """Refuse a checkpoint whose model shape differs from the configuration, naming fields."""
    saved_model = saved.get("model", {})
    current = cfg.to_dict()["model"]
    diffs = [f"--{k.replace('_', '-')}: checkpoint {saved_model.get(k)!r}, configured {current[k]!r}"
             for k in MODEL_SHAPE_FIELDS if k in saved_model and saved_model.get(k) != current[k]]
    if diffs:
        raise ConfigError(f"{where} does not match the model configuration: " + "; ".join(diffs))


def read_common_state(path: str) -> dict:
    """The common (non-sharded) part of a checkpoint: ``common.pt``.

    Megatron-LM's holds its argparse ``args`` namespace (and enums inside it), which
    ``torch.load``'s safe unpickler refuses unless they are allow-listed. Megatron-LM
    allow-lists the same classes, process-wide, when it loads its own checkpoints; so does
    this (``dist_checkpointing.load`` reads common.pt again)."""
    import argparse

    safe = [argparse.Namespace]
    try:
        from megatron.core.transformer.enums import AttnBackend, AttnMaskType

        safe += [AttnBackend, AttnMaskType]
    except ImportError:  # pragma: no cover - older megatron-core
        pass
    torch.serialization.add_safe_globals(safe)
    try:
        return dist_checkpointing.load_common_state_dict(path)
    except pickle.UnpicklingError as error:
        unsupported = [line.strip() for line in str(error).splitlines() if "Unsupported global" in line]
        raise ConfigError(f"checkpoint {path}: common.pt holds objects that are not loaded without running their "
                          f"code ({unsupported[0] if unsupported else error})") from None


def checkpoint_source(common: dict, path: str) -> str:
    """'megatron_ixt' (this project, or converted from Hugging Face), or 'megatron-lm'."""
    if "config" in common:
        return "megatron_ixt"
    if "args" in common:
        return "megatron-lm"
    raise ConfigError(f"checkpoint {path}: common.pt has neither this project's 'config' nor Megatron-LM's "
                      f"'args' (keys: {', '.join(sorted(common))}): not a megatron_ixt or Megatron-LM checkpoint")


def _resolved_shape(m: dict) -> dict:
    """Model shape with the defaults filled in the way megatron-core fills them."""
    heads = m["num_attention_heads"]
    return {
        "num_layers": m["num_layers"], "hidden_size": m["hidden_size"],
        "ffn_hidden_size": m.get("ffn_hidden_size") or 4 * m["hidden_size"],
        "num_attention_heads": heads,
        "num_query_groups": (m.get("num_query_groups") or heads) if m.get("group_query_attention") else heads,
        "kv_channels": m.get("kv_channels") or m["hidden_size"] // heads,
        "swiglu": bool(m.get("swiglu")), "normalization": m.get("normalization", "LayerNorm"),
        "position_embedding_type": m.get("position_embedding_type", "learned_absolute"),
        "untie_embeddings_and_output_weights": bool(m.get("untie_embeddings_and_output_weights")),
        "disable_bias_linear": bool(m.get("disable_bias_linear")),
        "rotary_base": m.get("rotary_base", 10000), "rotary_percent": m.get("rotary_percent", 1.0),
    }


def check_megatron_lm_compatible(args, cfg: Config, path: str, finetune: bool) -> None:
    """A checkpoint written by Megatron-LM (``args`` instead of ``config`` in common.pt):
    its weights load under ``--finetune`` when the model shapes agree; otherwise the error
    names every setting that differs, with Megatron-LM's flag names (the same as ours)."""
    theirs = vars(args) if not isinstance(args, dict) else dict(args)
    if "add_bias_linear" in theirs:
        theirs["disable_bias_linear"] = not theirs["add_bias_linear"]
    if theirs.get("position_embedding_type") is None and theirs.get("use_rotary_position_embeddings"):
        theirs["position_embedding_type"] = "rope"
    missing = [k for k in ("num_layers", "hidden_size", "num_attention_heads") if theirs.get(k) is None]
    if missing:
        raise ConfigError(f"checkpoint {path} (Megatron-LM) records no {', '.join(missing)} in its args")
    saved, ours = _resolved_shape(theirs), _resolved_shape(cfg.to_dict()["model"])
    diffs = [f"--{k.replace('_', '-')}: checkpoint {saved[k]!r}, configured {ours[k]!r}"
             for k in saved if saved[k] != ours[k]]
    if theirs.get("norm_epsilon") is not None and theirs["norm_epsilon"] != cfg.model.norm_epsilon:
        logger.warning("checkpoint %s was trained with --norm-epsilon %s, this run uses %s",
                       path, theirs["norm_epsilon"], cfg.model.norm_epsilon)
    if diffs:
        raise ConfigError(f"checkpoint {path} was written by Megatron-LM and does not match the model "
                          "configuration: " + "; ".join(diffs))
    if not finetune:
        raise ConfigError(f"checkpoint {path} was written by Megatron-LM: load its weights with --finetune "
                          "(its optimizer, scheduler and RNG states are Megatron-LM's, not this project's)")


def checkpoint_path(root: str, iteration: int) -> str:
    """The folder of ``iteration``; its ``.old`` twin while an interrupted re-save of it
    has not been repaired yet (see :func:`replace_folder`)."""
    path = checkpoint_name(root, iteration)
    if not os.path.isdir(path) and os.path.isdir(path + OLD_SUFFIX):
        return path + OLD_SUFFIX
    return path


@dataclasses.dataclass
class OpenedCheckpoint:
    path: str
    iteration: int
    common: dict
    source: str  # 'megatron_ixt' or 'megatron-lm'

    @property
    def weights_only(self) -> bool:
        """No optimizer, RNG or training state to restore: a Megatron-LM checkpoint, or one
        converted from Hugging Face (tools/convert_checkpoint.py --from hf)."""
        return self.source != "megatron_ixt" or self.common.get("weights_only", False)


def open_checkpoint(root: str, cfg: Config, model, finetune: bool = False) -> Optional[OpenedCheckpoint]:
    """The latest checkpoint under ``root``, its common state checked against the model
    configuration and this model's padded vocabulary; None when there is none. The one
    entry for training (``load``) and the inference tools (``evaluation.engine``)."""
    iteration = read_tracker(root) if os.path.isdir(root) else None
    if iteration is None:
        return None
    path = checkpoint_path(root, iteration)
    common = read_common_state(path)
    source = checkpoint_source(common, path)
    if source == "megatron-lm":
        check_megatron_lm_compatible(common["args"], cfg, path, finetune=finetune)
        padded = getattr(common["args"], "padded_vocab_size", None)
    else:
        check_model_compatible(common["config"], cfg, f"checkpoint {path}")
        padded = common["padded_vocab_size"]
    if padded is not None and padded != _padded_vocab(model):
        raise ConfigError(f"checkpoint {path} has a padded vocabulary of {padded}, this run "
                          f"{_padded_vocab(model)}: check --vocab-size/--tokenizer-model and "
                          "--make-vocab-size-divisible-by (the padding is a multiple of it x TP size)")
    return OpenedCheckpoint(path, iteration, common, source)


def load_sharded(opened: OpenedCheckpoint, model, extra=None) -> dict:
    """Read the model weights into ``model``, resharded to this run's layout by megatron-core,
    with the entries ``extra(model_sharded_state_dict)`` returns (optimizer, RNG); returns
    what was loaded."""
    sharded = model_sharded_state_dict(model)
    if extra is not None:
        sharded.update(extra(sharded))
    loaded = dist_checkpointing.load(sharded, opened.path)
    load_model_weights(model, loaded)
    return loaded


# Scheduler state (megatron-core's OptimizerParamScheduler.state_dict) -> the flag that sets it.
# Steps are counted in samples: iterations x --global-batch-size.
SCHEDULE_FIELDS = {"max_lr": "--lr", "min_lr": "--min-lr", "lr_warmup_steps": "--lr-warmup-iters/--lr-warmup-fraction",
                   "lr_decay_steps": "--lr-decay-iters (default --train-iters)", "lr_decay_style": "--lr-decay-style",
                   "start_wd": "--weight-decay"}


def schedule_differences(saved: dict, current: dict, saved_config: dict, cfg: Config) -> list[str]:
    """Each schedule setting of this run that differs from the checkpoint's, with both values."""
    saved_gbs = saved_config.get("training", {}).get("global_batch_size") or 1
    gbs = cfg.training.global_batch_size

    def show(value, batch):
        return f"{value // batch} iterations ({value} samples)" if isinstance(value, int) else repr(value)

    diffs = []
    for key, flag in SCHEDULE_FIELDS.items():
        if key in saved and saved[key] != current[key]:
            diffs.append(f"{flag}: checkpoint {show(saved[key], saved_gbs)}, configured {show(current[key], gbs)}")
    if cfg.optimizer.lr_decay_style == "WSD":
        theirs = saved_config.get("optimizer", {})
        for name in ("lr_wsd_decay_iters", "lr_wsd_decay_style"):
            if name in theirs and theirs[name] != getattr(cfg.optimizer, name):
                diffs.append(f"--{name.replace('_', '-')}: checkpoint {theirs[name]!r}, "
                             f"configured {getattr(cfg.optimizer, name)!r}")
    return diffs


def load_scheduler(cfg: Config, scheduler, opened: OpenedCheckpoint) -> None:
    """Megatron-LM's rule: the schedule flags of a resumed run must match the checkpoint's,
    unless --override-opt-param-scheduler (this run's values win) or
    --use-checkpoint-opt-param-scheduler (the checkpoint's win). The step count always
    comes from the checkpoint. Unlike megatron-core's assertion (one field, hidden below the
    log level), every differing flag is named, with both values."""
    o = cfg.optimizer
    saved = opened.common["opt_param_scheduler"]
    if not (o.override_opt_param_scheduler or o.use_checkpoint_opt_param_scheduler):
        diffs = schedule_differences(saved, scheduler.state_dict(), opened.common["config"], cfg)
        if diffs:
            raise ConfigError(f"checkpoint {opened.path} was trained with another learning-rate schedule: "
                              + "; ".join(diffs) + ". Pass --override-opt-param-scheduler to use this run's "
                              "values or --use-checkpoint-opt-param-scheduler to keep the checkpoint's")
    # Checked above (or chosen by the user): megatron-core then takes the checkpoint's
    # values, or this run's under --override-opt-param-scheduler.
    scheduler.override_opt_param_scheduler = o.override_opt_param_scheduler
    scheduler.use_checkpoint_opt_param_scheduler = not o.override_opt_param_scheduler
    scheduler.load_state_dict(saved)
    if o.use_checkpoint_opt_param_scheduler or o.override_opt_param_scheduler:
        logger.info("learning-rate schedule: %s (lr %g, min lr %g, %s decay over %d samples)",
                    "this run's flags" if o.override_opt_param_scheduler else "the checkpoint's",
                    scheduler.max_lr, scheduler.min_lr, scheduler.lr_decay_style, scheduler.lr_decay_steps)


def load(cfg: Config, layout: ParallelLayout, model, optimizer, scheduler, state) -> Optional[int]:
    """Restore from ``--load`` into the already built model/optimizer/scheduler/state.
    Returns the loaded iteration, or None when starting from scratch."""
    c = cfg.checkpoint
    if not c.load:
        return None
    # Repair only this run's own --save folder, locked by now (pretrain_ixt.py): another
    # --load folder may be a live run's, its .partial folder a save in flight. Reading needs
    # no repair (checkpoint_path falls back on an interrupted re-save's .old twin).
    if c.save and os.path.realpath(c.load) == os.path.realpath(c.save):
        clean_partial_checkpoints(c.load)  # collective: every rank must reach its barrier
    start = time.perf_counter()
    opened = open_checkpoint(c.load, cfg, model, finetune=c.finetune)
    if opened is None:
        if cfg.training.exit_on_missing_checkpoint:
            raise ConfigError(f"--load {c.load}: no {TRACKER_FILE} found (--exit-on-missing-checkpoint)")
        logger.warning("--load %s: no checkpoint found, training from scratch", c.load)
        return None
    path, common = opened.path, opened.common
    same_layout = common.get("layout") == layout.checkpoint_record()
    # Weights only: --finetune, or a checkpoint without training state (Megatron-LM's, loaded
    # under --finetune only; converted from Hugging Face, which starts counting at 0).
    weights_only = c.finetune or opened.weights_only

    load_optim = not (c.no_load_optim or weights_only)
    load_rng = not (c.no_load_rng or weights_only)
    if load_rng and not same_layout:
        logger.warning("checkpoint layout %s differs from this run's %s: RNG states are not restored",
                       common["layout"], layout.checkpoint_record())
        load_rng = False

    def extra(model_sharded: dict) -> dict:
        parts = {}
        if load_optim:
            parts["optimizer"] = optimizer.sharded_state_dict(model_sharded, is_loading=True)
        if load_rng:
            parts["rng_state"] = _rng_state(layout)
        return parts

    if load_optim:  # refuse a changed schedule before the (slow) read of the shards
        load_scheduler(cfg, scheduler, opened)
    # megatron-core's scheduler reads the peak and final lr of each parameter group, which
    # the optimizer state restores from the checkpoint: keep this run's under the override.
    group_lrs = [(g.get("max_lr"), g.get("min_lr")) for g in optimizer.param_groups] if load_optim else []
    loaded = load_sharded(opened, model, extra)
    if load_optim:
        optimizer.load_state_dict(loaded["optimizer"])
        if cfg.optimizer.override_opt_param_scheduler:
            for group, (max_lr, min_lr) in zip(optimizer.param_groups, group_lrs):
                group["max_lr"], group["min_lr"] = max_lr, min_lr
    if load_rng:
        _restore_rng(loaded["rng_state"])
    if not weights_only:
        for key, value in common["train_state"].items():
            setattr(state, key, value)
    torch.distributed.barrier()
    logger.info("loaded checkpoint %s (iteration %d%s%s) in %.2f s", path, opened.iteration,
                ", weights only" if weights_only else "",
                "" if opened.source == "megatron_ixt" else f", written by {opened.source}", time.perf_counter() - start)
    return opened.iteration
