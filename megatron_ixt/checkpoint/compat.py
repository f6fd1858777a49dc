"""Checkpoints written by Megatron-LM: recognised by their ``common.pt`` (argparse ``args``
instead of this project's ``config``), loaded for their weights under ``--finetune`` when
the model shapes agree."""

from __future__ import annotations

import logging

from megatron_ixt.config.cli import ConfigError
from megatron_ixt.config.schema import Config

logger = logging.getLogger("megatron_ixt")


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
        "add_qkv_bias": bool(m.get("add_qkv_bias")), "qk_layernorm": bool(m.get("qk_layernorm")),
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
