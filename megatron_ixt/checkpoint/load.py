"""Loading: the one opener of a checkpoint (:func:`open_checkpoint`) and the checks a
resumed run must pass: the model shape, the padded vocabulary, the learning-rate schedule.

Training (:func:`load`), the inference tools (``evaluation.engine``), the exporter and
``tools/checkpoint_info.py`` find and read checkpoints through here and ``checkpoint.files``.
A checkpoint saved at one TP/PP layout loads into any other: megatron-core reshards it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import time
from typing import Optional

import torch
from megatron.core import dist_checkpointing

from megatron_ixt.checkpoint.compat import check_megatron_lm_compatible, checkpoint_source
from megatron_ixt.checkpoint.contents import (model_keys, model_sharded_state_dict, padded_vocab, restore_rng,
                                               rng_state, unwrap)
from megatron_ixt.checkpoint.files import TRACKER_FILE, checkpoint_path, clean_partial_checkpoints, read_tracker
from megatron_ixt.config.batch_schedule import schedule_steps
from megatron_ixt.config.cli import ConfigError
from megatron_ixt.config.schema import Config
from megatron_ixt.runtime.distributed import ParallelLayout

logger = logging.getLogger("megatron_ixt")

# Model fields that change parameter shapes or semantics: a mismatch makes a checkpoint unloadable.
MODEL_SHAPE_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                      "kv_channels", "swiglu", "normalization", "position_embedding_type",
                      "untie_embeddings_and_output_weights", "disable_bias_linear", "add_qkv_bias", "qk_layernorm",
                      # Transformer Engine and local layers name their weights differently
                      # (a fused layer norm inside linear_qkv against input_layernorm).
                      "transformer_impl")


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


def load_model_weights(model, loaded: dict) -> None:
    """Copy the model part of a loaded checkpoint into ``model`` (DDP-wrapped or bare chunks)."""
    for key, chunk in zip(model_keys(model), model):
        unwrap(chunk).load_state_dict(loaded[key])


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


def check_vocabulary(path: str, saved_padded: Optional[int], saved_vocab: Optional[int], vocab_size: int,
                     padded: int) -> None:
    """The checkpoint's vocabulary must be this run's tokenizer's; its *padding* may differ.

    The padding (``--make-vocab-size-divisible-by`` x TP size) belongs to no token, so it
    never ties a checkpoint to a layout: megatron-core loads the embedding and output layer
    with ``allow_shape_mismatch`` (their rows beyond the checkpoint's start at zero, rows
    beyond this run's padding are dropped), in the model weights and in the optimizer's
    states alike. What is refused is a tokenizer the checkpoint has no rows for."""
    if saved_vocab is not None and saved_vocab != vocab_size:
        raise ConfigError(f"checkpoint {path} was trained with a vocabulary of {saved_vocab} tokens, this run's "
                          f"tokenizer has {vocab_size}: pass the tokenizer the model was trained with "
                          "(--tokenizer-type/--tokenizer-model/--vocab-file/--merge-file, or --vocab-size)")
    if saved_padded is not None and saved_padded < vocab_size:
        raise ConfigError(f"checkpoint {path} has {saved_padded} embedding rows, this run's tokenizer "
                          f"{vocab_size} tokens: is it the tokenizer the model was trained with?")
    if saved_padded is not None and saved_padded != padded:
        logger.info("checkpoint %s: vocabulary padding %d rows, this layout's %d (re-padded: the %d token "
                    "rows load as saved)", path, saved_padded, padded, vocab_size)


def open_checkpoint(root: str, cfg: Config, model, vocab_size: int,
                    finetune: bool = False) -> Optional[OpenedCheckpoint]:
    """The latest checkpoint under ``root``, its common state checked against the model
    configuration and this run's vocabulary (``vocab_size``: the tokenizer's, before
    padding); None when there is none. The one entry for training (``load``) and the
    inference tools (``evaluation.engine``)."""
    iteration = read_tracker(root) if os.path.isdir(root) else None
    if iteration is None:
        return None
    path = checkpoint_path(root, iteration)
    common = read_common_state(path)
    source = checkpoint_source(common, path)
    if source == "megatron-lm":
        check_megatron_lm_compatible(common["args"], cfg, path, finetune=finetune)
        saved_padded, saved_vocab = getattr(common["args"], "padded_vocab_size", None), None
    else:
        check_model_compatible(common["config"], cfg, f"checkpoint {path}")
        saved_padded, saved_vocab = common["padded_vocab_size"], common.get("vocab_size")
    check_vocabulary(path, saved_padded, saved_vocab, vocab_size, padded_vocab(model))
    return OpenedCheckpoint(path, iteration, common, source)


def recorded_document_start(root: Optional[str]) -> Optional[str]:
    """The document-start convention the latest checkpoint under ``root`` records
    (``--document-start``); None without a checkpoint, "eod" for one saved before it was
    recorded (all of this project's own were trained on EOD-separated documents)."""
    iteration = read_tracker(root) if root and os.path.isdir(root) else None
    if iteration is None:
        return None
    common = read_common_state(checkpoint_path(root, iteration))
    if checkpoint_source(common, root) != "megatron_ixt":
        return None
    return Config.from_dict(common["config"]).model.document_start or "eod"


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


# Scheduler state (megatron-core's OptimizerParamScheduler.state_dict) -> the flag that sets
# it, in a run counted in iterations and in one counted in samples (--train-samples). Steps
# are samples either way: iterations x --global-batch-size, or the --*-samples flags as given.
SCHEDULE_FIELDS = {"max_lr": ("--lr", "--lr"), "min_lr": ("--min-lr", "--min-lr"),
                   "lr_warmup_steps": ("--lr-warmup-iters/--lr-warmup-fraction",
                                       "--lr-warmup-samples/--lr-warmup-fraction"),
                   "lr_decay_steps": ("--lr-decay-iters (default --train-iters)",
                                      "--lr-decay-samples (default --train-samples)"),
                   "lr_decay_style": ("--lr-decay-style", "--lr-decay-style"),
                   "start_wd": ("--weight-decay", "--weight-decay")}


def schedule_differences(saved: dict, current: dict, saved_config: dict, cfg: Config) -> list[str]:
    """Each schedule setting of this run that differs from the checkpoint's, with both values
    (each side's steps shown as it counts them: iterations, or samples under --train-samples)."""
    ours = cfg.to_dict()

    def steps(value, config: dict) -> str:
        t = config.get("training", {})
        if t.get("train_samples") is not None:
            return f"{value:g} samples"
        return f"{value // (t.get('global_batch_size') or 1):g} iterations ({value:g} samples)"

    by_samples = cfg.training.train_samples is not None
    diffs = []
    for key, flags in SCHEDULE_FIELDS.items():
        if key in saved and saved[key] != current[key]:
            if key.endswith("_steps"):
                diffs.append(f"{flags[by_samples]}: checkpoint {steps(saved[key], saved_config)}, "
                             f"configured {steps(current[key], ours)}")
            else:
                diffs.append(f"{flags[by_samples]}: checkpoint {saved[key]!r}, configured {current[key]!r}")
    if cfg.optimizer.lr_decay_style == "WSD":
        theirs_o = saved_config.get("optimizer", {})
        # Both lengths in samples, as each run's scheduler counts them.
        theirs, mine = (schedule_steps(c)["wsd_decay_steps"] for c in (Config.from_dict(saved_config), cfg))
        if theirs_o and theirs != mine:
            flag = "--lr-wsd-decay-samples" if by_samples else "--lr-wsd-decay-iters"
            diffs.append(f"{flag}: checkpoint {theirs} samples, configured {mine} samples")
        if "lr_wsd_decay_style" in theirs_o and theirs_o["lr_wsd_decay_style"] != cfg.optimizer.lr_wsd_decay_style:
            diffs.append(f"--lr-wsd-decay-style: checkpoint {theirs_o['lr_wsd_decay_style']!r}, "
                         f"configured {cfg.optimizer.lr_wsd_decay_style!r}")
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


def load(cfg: Config, layout: ParallelLayout, model, optimizer, scheduler, state, vocab_size: int) -> Optional[int]:
    """Restore from ``--load`` into the already built model/optimizer/scheduler/state
    (``vocab_size``: the tokenizer's, which the checkpoint's vocabulary must equal).
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
    opened = open_checkpoint(c.load, cfg, model, vocab_size, finetune=c.finetune)
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
            parts["rng_state"] = rng_state(layout)
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
        restore_rng(loaded["rng_state"])
    if not weights_only:
        for key, value in common["train_state"].items():
            setattr(state, key, value)
    torch.distributed.barrier()
    logger.info("loaded checkpoint %s (iteration %d%s%s) in %.2f s", path, opened.iteration,
                ", weights only" if weights_only else "",
                "" if opened.source == "megatron_ixt" else f", written by {opened.source}", time.perf_counter() - start)
    return opened.iteration
