"""Export a checkpoint (any TP/PP layout) to a Hugging Face Llama folder.

The checkpoint is loaded on one process at TP=1, PP=1 through the same path as
inference (`evaluation/engine.py`): megatron-core's dist_checkpointing reshards it, so the
layout it was saved at does not matter, nor its vocabulary padding, which is cut on export:
`vocab_size` in `config.json` is the tokenizer's, delimiters included.

Writes `config.json`, `model.safetensors`, `generation_config.json` and the tokenizer files
(`hf_tokenizer.py`), each under a temporary name, renamed when all are complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile

import torch

from megatron_ixt.conversion import ConversionError
from megatron_ixt.conversion.hf_tokenizer import export_tokenizer
from megatron_ixt.conversion.llama import check_exportable, hf_config, to_hf

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_full_model(load: str, tokenizer_overrides: dict):
    """(config, full megatron state dict on CPU, tokenizer) of the checkpoint in `load`,
    on an initialised single-process group."""
    from megatron_ixt.checkpoint.files import checkpoint_name, read_tracker
    from megatron_ixt.checkpoint.load import read_common_state
    from megatron_ixt.evaluation.engine import InferenceModel, config_from_checkpoint, init_inference

    iteration = read_tracker(load)
    if iteration is None:
        raise ConversionError(f"--load {load}: no checkpoint (missing latest_checkpointed_iteration.txt)")
    common = read_common_state(checkpoint_name(load, iteration))
    if "config" not in common:
        raise ConversionError(f"--load {load}: not a checkpoint of this project (common.pt has no 'config'); "
                              "a Megatron-LM checkpoint loads with pretrain_ixt.py --finetune, then save and export")
    overrides = {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1, "sequence_parallel": False,
                 "num_layers_per_virtual_pipeline_stage": None, "hidden_dropout": 0.0, "attention_dropout": 0.0,
                 "transformer_impl": "local", **{k: v for k, v in tokenizer_overrides.items() if v is not None}}
    cfg = config_from_checkpoint(load, overrides)
    check_exportable(cfg.model)
    run = init_inference(cfg)
    tokenizer = run.tokenizer
    model = InferenceModel(run)  # refuses a tokenizer other than the checkpoint's
    state = {k: v.detach().cpu() for k, v in model.chunks[0].state_dict().items() if not k.endswith("_extra_state")}
    return cfg, state, tokenizer, model


def export_to_hf(load: str, output: str, dtype: str = "float32", tokenizer_overrides: dict | None = None) -> dict:
    """Convert the checkpoint in `load` to a Hugging Face folder `output`; returns a summary."""
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ConversionError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    cfg, state, tokenizer, model = load_full_model(load, tokenizer_overrides or {})
    m = cfg.model
    vocab = tokenizer.vocab_size
    weights = {k: v.to(DTYPES[dtype]) for k, v in to_hf(state, m, vocab).items()}
    max_positions = m.max_position_embeddings or m.seq_length
    config = hf_config(m, vocab, tokenizer.eod, dtype, max_positions)
    generation = {
        "bos_token_id": tokenizer.eod,
        "eos_token_id": tokenizer.eod,
        "pad_token_id": tokenizer.eod,
        # The model may neither open nor close a feedback prefix of its own (as tools/generate.py).
        "suppress_tokens": [tokenizer.feedback_open_id, tokenizer.feedback_close_id],
        "max_length": max_positions,
    }
    parent = os.path.dirname(os.path.abspath(output)) or "."
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.", suffix=".tmp", dir=parent)
    try:
        save_file(weights, os.path.join(work, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(work, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(work, "generation_config.json"), "w") as f:
            json.dump(generation, f, indent=2)
        tokenizer_info = export_tokenizer(tokenizer, work, max_positions)
        if os.path.isdir(output):
            shutil.rmtree(output)
        os.replace(work, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {"output": output, "iteration": model.iteration, "vocab_size": vocab,
               "padded_vocab_size": model.chunks[0].vocab_size, "parameters": sum(v.numel() for v in weights.values()),
               "dtype": dtype, **tokenizer_info}
    logger.info("exported %s (iteration %d) to %s: %s", load, model.iteration, output, summary)
    return summary
