"""Training data: megatron-core datasets behind one interface.

The pipeline, end to end:
1. ``build_datasets``: ``BlendedMegatronDatasetBuilder`` builds train/valid/test splits
   (mock, plain GPT, or IXT datasets: ``choose_dataset``) from ``--data-path``/``--split``,
   blending weighted prefixes; rank 0 builds the index caches, the others load them.
2. ``data/loader.py`` streams each rank's micro-batches (typed: ``data/batch.py``) to the
   pipeline schedule. No attention mask: document boundaries are recovered from the EOD
   tokens where a kernel needs them.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset
from megatron.core.datasets.utils import get_blend_from_list

from megatron_ixt.config.schema import Config

logger = logging.getLogger(__name__)


def dataset_sizes(cfg: Config) -> list[int]:
    """Samples each split must provide: all training iterations, and validation for every
    evaluation plus one at the end."""
    t = cfg.training
    train = t.train_iters * t.global_batch_size
    evals = (t.train_iters // t.eval_interval + 1) if t.eval_interval else 0
    valid = evals * t.eval_iters * t.global_batch_size
    return [train, valid, t.eval_iters * t.global_batch_size]


def gpt_dataset_config(cfg: Config, tokenizer, config_cls=GPTDatasetConfig, **extra) -> GPTDatasetConfig:
    d = cfg.data
    return config_cls(
        random_seed=cfg.training.seed,
        sequence_length=cfg.model.seq_length,
        blend=None if d.mock_data else get_blend_from_list(d.data_path),
        split=d.split,
        path_to_cache=d.data_cache_path,
        tokenizer=tokenizer,
        reset_position_ids=d.reset_position_ids,
        reset_attention_mask=d.reset_attention_mask,
        eod_mask_loss=d.eod_mask_loss,
        # Never an [s, s] mask in a batch: the training step derives document boundaries from
        # the EOD tokens and gives the attention kernel the form it needs (runtime/kernels.py).
        create_attention_mask=False,
        **extra,
    )


def data_prefixes(cfg: Config) -> list[str]:
    """The dataset prefixes of ``--data-path`` without their weights."""
    paths, _ = get_blend_from_list(cfg.data.data_path)
    return paths


def dataset_record(cfg: Config) -> Optional[dict]:
    """The prefix template and quality thresholds of the training data, from the datasets'
    ``.meta.json``; None for mock data, plain GPT datasets or datasets that disagree.
    Checkpoints record it, so that the inference tools condition on the prefixes the model saw."""
    if cfg.data.mock_data or not cfg.data.data_path:
        return None
    from megatron_ixt.format.indexed_io import read_metadata

    records = []
    for prefix in data_prefixes(cfg):
        meta = read_metadata(prefix, missing_ok=True)
        if meta is None:
            return None  # a dataset preprocessed by Megatron-LM: no prefixes
        records.append({"template": meta.get("template"), "quality_thresholds": meta.get("quality_thresholds")})
    if any(r != records[0] for r in records):
        logger.warning("the datasets of --data-path were preprocessed with different prefix templates or "
                       "thresholds: checkpoints record none (pass --prefix-template to the inference tools)")
        return None
    return records[0] if records[0]["template"] else None


def choose_dataset(cfg: Config, tokenizer):
    """Mock data, IXT datasets (every prefix has an ``.ixt.npy`` side file), or plain GPT
    datasets (none has: data preprocessed by Megatron-LM's tool)."""
    from megatron_ixt.config.cli import ConfigError
    from megatron_ixt.format.indexed_io import ROLES_FILE_SUFFIX, SIDE_FILE_SUFFIX
    from megatron_ixt.data.ixt_dataset import IXTDataset, IXTDatasetConfig

    if cfg.data.mock_data:
        return MockGPTDataset, gpt_dataset_config(cfg, tokenizer)
    prefixes = data_prefixes(cfg)
    missing = [p for p in prefixes if not os.path.isfile(p + ".bin") or not os.path.isfile(p + ".idx")]
    if missing:
        raise ConfigError(f"--data-path: no indexed dataset at {', '.join(missing)} (expected PREFIX.bin and PREFIX.idx)")
    check_tokenizer_matches(prefixes, tokenizer)
    with_roles = [os.path.isfile(p + ROLES_FILE_SUFFIX) for p in prefixes]
    if cfg.data.sft:
        if not all(with_roles):
            plain = [p for p, has in zip(prefixes, with_roles) if not has]
            raise ConfigError(f"--sft: {', '.join(plain)} has no {ROLES_FILE_SUFFIX}: SFT data are conversations "
                              "preprocessed with tools/preprocess_data.py --sft")
        from megatron_ixt.data.sft_dataset import SFTDataset, SFTDatasetConfig

        return SFTDataset, gpt_dataset_config(cfg, tokenizer, SFTDatasetConfig,
                                              ixt_feedback_dropout=cfg.ixt.ixt_feedback_dropout)
    if any(with_roles):
        sft = [p for p, has in zip(prefixes, with_roles) if has]
        raise ConfigError(f"--data-path: {', '.join(sft)} holds conversations (tools/preprocess_data.py --sft): "
                          "train on it with --sft")
    with_side = [os.path.isfile(p + SIDE_FILE_SUFFIX) for p in prefixes]
    if all(with_side):
        ixt = cfg.ixt
        return IXTDataset, gpt_dataset_config(
            cfg, tokenizer, IXTDatasetConfig, ixt_prefix_loss=ixt.ixt_prefix_loss,
            ixt_feedback_dropout=ixt.ixt_feedback_dropout, ixt_repeat_prefix=ixt.ixt_repeat_prefix,
            ixt_cooldown_fraction=ixt.ixt_cooldown_fraction)
    if any(with_side):
        plain = [p for p, has in zip(prefixes, with_side) if not has]
        raise ConfigError(f"--data-path mixes IXT datasets with plain ones without {SIDE_FILE_SUFFIX}: {', '.join(plain)}")
    logger.info("no %s side files: training on plain GPT datasets (no feedback prefixes)", SIDE_FILE_SUFFIX)
    return GPTDataset, gpt_dataset_config(cfg, tokenizer)


def check_tokenizer_matches(prefixes: list[str], tokenizer) -> None:
    """Refuse datasets preprocessed with another tokenizer than training's: the ids their
    `.meta.json` records (vocabulary size, eod, both feedback delimiters, appended ones
    included) must be this tokenizer's. Datasets without a `.meta.json` (Megatron-LM's) pass."""
    from megatron_ixt.config.cli import ConfigError
    from megatron_ixt.format.errors import DataError
    from megatron_ixt.format.indexed_io import META_FILE_SUFFIX, read_metadata

    ours = {"vocab_size": tokenizer.vocab_size, "eod": getattr(tokenizer, "eod", None),
            "feedback_open_id": getattr(tokenizer, "feedback_open_id", None),
            "feedback_close_id": getattr(tokenizer, "feedback_close_id", None)}
    for prefix in prefixes:
        path = prefix + META_FILE_SUFFIX
        try:
            meta = read_metadata(prefix, missing_ok=True)
        except DataError as error:  # a corrupt file: a configuration error, not a traceback
            raise ConfigError(f"--data-path: {error}") from None
        if meta is None:
            continue
        recorded = meta.get("tokenizer") or {}
        diffs = [f"{key} {recorded[key]} (training: {value})" for key, value in ours.items()
                 if recorded.get(key) is not None and value is not None and recorded[key] != value]
        if diffs:
            raise ConfigError(f"{path}: preprocessed with another tokenizer ({recorded.get('type')}, "
                              f"{', '.join((recorded.get('files') or {}).values())}): " + "; ".join(diffs))


def build_datasets(cfg: Config, tokenizer, dataset_cls=None, config=None):
    """(train, valid, test) datasets; ``None`` for an empty split."""
    if dataset_cls is None:
        dataset_cls, config = choose_dataset(cfg, tokenizer)
    # Every rank builds the datasets (memory maps: cheap), so that every rank knows the split
    # sizes; only the ranks that read micro-batches open a loader (data/loader.py). The
    # builder builds the index caches on rank 0 first and the others load them after a barrier.
    builder = BlendedMegatronDatasetBuilder(dataset_cls, dataset_sizes(cfg), lambda: True, config)
    return builder.build()
