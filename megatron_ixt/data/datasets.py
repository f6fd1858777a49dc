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

from megatron_ixt.config.batch_schedule import samples_for_iterations
from megatron_ixt.config.schema import Config

logger = logging.getLogger(__name__)


def dataset_sizes(cfg: Config) -> list[int]:
    """Samples each split must provide: all training iterations (their global batches, which
    may ramp up; at least --train-samples, as Megatron-LM builds), and validation for every
    evaluation plus one at the end (validation takes full global batches)."""
    t = cfg.training
    train = samples_for_iterations(t, t.train_iters)
    if t.train_samples is not None:
        # Megatron-LM's ramp-up count of iterations may end a batch past --train-samples.
        train = max(train, t.train_samples)
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
        mmap_bin_files=d.mmap_bin_files,
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


# What a model's documents must look like in its data, by its --document-start, as the
# .meta.json of a preprocessed dataset records it: (required settings, the flags that give them).
DOCUMENT_START_DATA = {
    "bos": ({"prepend_bos": True}, "--prepend-bos (and --append-eod to separate documents)"),
    "eod": ({"append_eod": True}, "--append-eod, without --prepend-bos"),
    "none": ({"prepend_bos": False}, "no --prepend-bos (--append-eod to separate documents)"),
}
DOCUMENT_START_TEXT = {"bos": "the tokenizer's BOS", "eod": "the previous document's EOD",
                       "none": "nothing (no BOS)"}


def check_document_start(cfg: Config, source: str) -> None:
    """Refuse pretraining data whose documents do not start as the model's do
    (``--document-start``; ``source`` says where the convention came from): a ``bos`` model
    (Llama) on documents without its BOS, a ``none`` model (SmolLM2, Qwen) on documents with
    one, an ``eod`` model on documents no EOD separates (with a BOS after the EOD: a warning). Generation and evaluation put the model's
    document start first, so training must too. Each dataset of a blend is checked, by its
    ``.meta.json``; SFT conversations follow their chat template instead (which writes the
    BOS where the model has one). Mock data and datasets without a ``.meta.json``
    (Megatron-LM's tool) cannot be checked: a warning says so."""
    from megatron_ixt.config.cli import ConfigError
    from megatron_ixt.format.errors import DataError
    from megatron_ixt.format.indexed_io import META_FILE_SUFFIX, read_metadata

    convention = cfg.model.document_start or "eod"
    required, flags = DOCUMENT_START_DATA[convention]
    if cfg.data.mock_data:
        if convention != "eod":  # megatron-core's mock documents end with the EOD, as eod models expect
            logger.warning("--mock-data: the model's documents start with %s (--document-start %s, %s); mock "
                           "documents have no BOS", DOCUMENT_START_TEXT[convention], convention, source)
        return
    for prefix in data_prefixes(cfg):
        try:
            meta = read_metadata(prefix, missing_ok=True)
        except DataError as error:
            raise ConfigError(f"--data-path: {error}") from None
        if meta is None:
            logger.warning("--data-path %s has no %s (preprocessed by Megatron-LM's tool?): cannot check that its "
                           "documents start as the model's do: %s (--document-start %s, %s; preprocess with %s)",
                           prefix, META_FILE_SUFFIX, DOCUMENT_START_TEXT[convention], convention, source, flags)
            continue
        # The top-level fields (a merged dataset's are every shard's: merge_datasets.py checks).
        settings = {k: meta.get(k, (meta.get("config") or {}).get(k)) for k in ("prepend_bos", "append_eod", "sft")}
        if settings.get("sft"):
            continue
        if convention == "eod" and settings.get("prepend_bos"):
            # Still an EOD before every document, as generation puts it; the BOS after it is a
            # constant token the user chose (the demo's BOS control trains exactly so).
            logger.warning("--data-path %s: documents start with the EOD and a BOS (--prepend-bos), but generation "
                           "and evaluation of an eod model put the EOD alone first", prefix)
        wrong = [key for key, value in required.items() if bool(settings.get(key)) != value]
        if wrong:
            given = " ".join(f"--{k.replace('_', '-')}" for k in ("prepend_bos", "append_eod") if settings.get(k))
            raise ConfigError(
                f"--data-path {prefix}: the model's documents start with {DOCUMENT_START_TEXT[convention]} "
                f"(--document-start {convention}, {source}), but {prefix}{META_FILE_SUFFIX} says the dataset was "
                f"preprocessed with {given or 'neither --prepend-bos nor --append-eod'}: preprocess it again with "
                f"{flags}")


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
