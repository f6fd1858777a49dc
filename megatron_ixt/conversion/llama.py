"""megatron-core GPT <-> Hugging Face Llama-style weights (Llama, Mistral, Qwen2, Qwen3).

Weights are the module state dict of a single-rank (TP=1, PP=1) megatron-core `GPTModel`
built with the local layer spec (`model/gpt.py`); megatron-core's dist_checkpointing gives
exactly these full tensors whatever layout a checkpoint was saved at. Per layer `i`:

| megatron-core (`decoder.layers.i.`)            | Hugging Face (`model.layers.i.`)                |
|------------------------------------------------|-------------------------------------------------|
| `input_layernorm.weight`                       | `input_layernorm.weight`                        |
| `self_attention.linear_qkv.weight` (`.bias`)   | `self_attn.{q,k,v}_proj.weight` (`.bias`: Qwen2)|
| `self_attention.{q,k}_layernorm.weight`        | `self_attn.{q,k}_norm.weight` (Qwen3)           |
| `self_attention.linear_proj.weight`            | `self_attn.o_proj.weight`                       |
| `pre_mlp_layernorm.weight`                     | `post_attention_layernorm.weight`               |
| `mlp.linear_fc1.weight`                        | `mlp.{gate,up}_proj.weight`                     |
| `mlp.linear_fc2.weight`                        | `mlp.down_proj.weight`                          |

plus `embedding.word_embeddings.weight` / `model.embed_tokens.weight`,
`decoder.final_layernorm.weight` / `model.norm.weight` and `output_layer.weight` /
`lm_head.weight` (absent when tied).

Layouts: `linear_qkv` holds, per query group, that group's query heads, then its key head,
then its value head (rows of `kv_channels` each; its bias the same way); Hugging Face keeps
q, k and v apart, query heads of group g being heads g*n/g .. (g+1)*n/g - 1, which is also
how its grouped-query attention pairs them. `linear_fc1` at TP=1 is [gate; up] (the first
half goes through SiLU, megatron-core's `glu`). RoPE needs no permutation: megatron-core
rotates the two halves of each head (`rotary_interleaved=False`), as `rotate_half` does,
with the same inverse frequencies `base ** (-2i/d)`.

Norm weights stored zero-centred (``--apply-layernorm-1p``: gamma - 1, computed as weight + 1)
are Hugging Face's gamma after adding 1 (in float32, so a BF16 checkpoint's small stored values
keep their precision until the one rounding to the exported dtype); import subtracts it.

Both directions go one tensor at a time (`conversion/safetensors_io.py`): import fills each
parameter of the model it builds from the few source tensors it needs; export produces each
Hugging Face tensor from a view of the loaded model when it is written.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from megatron_ixt.conversion import ConversionError

Getter = Callable[[str], torch.Tensor]


def resolved_dims(m) -> dict:
    """Heads, groups, head size and MLP size with megatron-core's defaults filled in."""
    heads = m.num_attention_heads
    groups = m.num_query_groups if m.group_query_attention and m.num_query_groups else heads
    return {
        "heads": heads,
        "groups": groups,
        "head_dim": m.kv_channels or m.hidden_size // heads,
        "ffn": m.ffn_hidden_size or 4 * m.hidden_size,
    }


def _is_norm(name: str) -> bool:
    return "norm" in name.rsplit(".", 2)[-2]


def _layer_names(m, i: int) -> list[tuple[str, str]]:
    """(megatron, Hugging Face) names of the tensors layer ``i`` copies as they are."""
    src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
    pairs = [("input_layernorm.weight", "input_layernorm.weight"),
             ("self_attention.linear_proj.weight", "self_attn.o_proj.weight"),
             ("pre_mlp_layernorm.weight", "post_attention_layernorm.weight"),
             ("mlp.linear_fc2.weight", "mlp.down_proj.weight")]
    if m.qk_layernorm:
        pairs += [("self_attention.q_layernorm.weight", "self_attn.q_norm.weight"),
                  ("self_attention.k_layernorm.weight", "self_attn.k_norm.weight")]
    return [(src + a, dst + b) for a, b in pairs]


# -- megatron-core -> Hugging Face ---------------------------------------------------------


def export_plan(m, vocab_size: int) -> list[tuple[str, str, Callable[[torch.Tensor], torch.Tensor]]]:
    """``(Hugging Face name, megatron name, extract)``: ``extract`` takes the megatron tensor
    (TP=1, full) and returns the Hugging Face one, a view where the layouts allow. The
    vocabulary padding rows (make_vocab_size_divisible_by) are cut: they belong to no token."""
    dims = resolved_dims(m)
    per_group = dims["heads"] // dims["groups"]
    d, h = dims["head_dim"], m.hidden_size

    def qkv_part(lo: int, hi: int, bias: bool):
        def extract(t: torch.Tensor) -> torch.Tensor:
            grouped = t.reshape(dims["groups"], (per_group + 2) * d, *([] if bias else [h]))
            return grouped[:, lo * d:hi * d].reshape(-1, *([] if bias else [h]))
        return extract

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t[:vocab_size]

    def same(t: torch.Tensor) -> torch.Tensor:
        return t

    def gamma(t: torch.Tensor) -> torch.Tensor:
        return t.float() + 1

    norm = gamma if m.apply_layernorm_1p else same
    plan = [("model.embed_tokens.weight", "embedding.word_embeddings.weight", rows)]
    for i in range(m.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        parts = {"q": (0, per_group), "k": (per_group, per_group + 1), "v": (per_group + 1, per_group + 2)}
        for kind in ("weight", "bias") if m.add_qkv_bias else ("weight",):
            for name, (lo, hi) in parts.items():
                plan.append((f"{dst}self_attn.{name}_proj.{kind}", f"{src}self_attention.linear_qkv.{kind}",
                             qkv_part(lo, hi, kind == "bias")))
        plan += [(theirs, ours, norm if _is_norm(ours) else same) for ours, theirs in _layer_names(m, i)]
        fc1 = src + "mlp.linear_fc1.weight"
        plan += [(dst + "mlp.gate_proj.weight", fc1, lambda t: t[:t.shape[0] // 2]),
                 (dst + "mlp.up_proj.weight", fc1, lambda t: t[t.shape[0] // 2:])]
    plan.append(("model.norm.weight", "decoder.final_layernorm.weight", norm))
    if m.untie_embeddings_and_output_weights:
        plan.append(("lm_head.weight", "output_layer.weight", rows))
    return plan


# -- Hugging Face -> megatron-core ---------------------------------------------------------


def import_plan(m, vocab_size: int, new_rows: Optional[list[int]] = None) -> dict[str, Callable[[torch.Tensor, Getter], None]]:
    """For each megatron parameter (TP=1), a function ``fill(parameter, get)`` that writes it
    from the Hugging Face tensors ``get(name)`` returns (read when needed, cast on copy).

    Embedding (and output) rows: token ids the Hugging Face model has no row for (appended
    delimiters, below ``vocab_size``) and the rows listed in ``new_rows`` start as the mean of
    the existing rows (Hugging Face's ``resize_token_embeddings`` convention: a new token
    starts as an "average" token); the padding rows from ``vocab_size`` on, which belong to
    no token, are zero."""
    dims = resolved_dims(m)
    per_group = dims["heads"] // dims["groups"]
    d, h = dims["head_dim"], m.hidden_size

    def rows(hf_name: str):
        def fill(out: torch.Tensor, get: Getter) -> None:
            matrix = get(hf_name)
            keep = min(matrix.shape[0], vocab_size)
            # The mean in float32, a block of rows at a time: mean(dtype=float32) of a BF16
            # matrix would first make a float32 copy of all of it.
            mean = sum(block.sum(dim=0, dtype=torch.float32) for block in matrix.split(8192)) / matrix.shape[0]
            out[:keep].copy_(matrix[:keep])
            out[keep:vocab_size] = mean
            for i in new_rows or []:
                out[i] = mean
            out[vocab_size:] = 0
        return fill

    def copy(hf_name: str, offset: float = 0.0):
        def fill(out: torch.Tensor, get: Getter) -> None:
            tensor = get(hf_name)
            if tensor.shape != out.shape:
                raise ConversionError(f"{hf_name}: shape {list(tensor.shape)}, the model expects {list(out.shape)}")
            out.copy_(tensor.float() + offset if offset else tensor)
        return fill

    def norm(hf_name: str):  # zero-centred storage: gamma - 1
        return copy(hf_name, -1.0 if m.apply_layernorm_1p else 0.0)

    def qkv(prefix: str, kind: str):
        def fill(out: torch.Tensor, get: Getter) -> None:
            tail = [h] if kind == "weight" else []
            grouped = out.view(dims["groups"], (per_group + 2) * d, *tail)
            grouped[:, :per_group * d].copy_(get(f"{prefix}q_proj.{kind}").reshape(dims["groups"], per_group * d, *tail))
            grouped[:, per_group * d:(per_group + 1) * d].copy_(get(f"{prefix}k_proj.{kind}").reshape(dims["groups"], d, *tail))
            grouped[:, (per_group + 1) * d:].copy_(get(f"{prefix}v_proj.{kind}").reshape(dims["groups"], d, *tail))
        return fill

    def gate_up(prefix: str):
        def fill(out: torch.Tensor, get: Getter) -> None:
            half = out.shape[0] // 2
            out[:half].copy_(get(prefix + "gate_proj.weight"))
            out[half:].copy_(get(prefix + "up_proj.weight"))
        return fill

    plan = {"embedding.word_embeddings.weight": rows("model.embed_tokens.weight")}
    for i in range(m.num_layers):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        plan[dst + "self_attention.linear_qkv.weight"] = qkv(src + "self_attn.", "weight")
        if m.add_qkv_bias:
            plan[dst + "self_attention.linear_qkv.bias"] = qkv(src + "self_attn.", "bias")
        plan.update({ours: (norm if _is_norm(ours) else copy)(theirs) for ours, theirs in _layer_names(m, i)})
        plan[dst + "mlp.linear_fc1.weight"] = gate_up(src + "mlp.")
    plan["decoder.final_layernorm.weight"] = norm("model.norm.weight")
    if m.untie_embeddings_and_output_weights:
        plan["output_layer.weight"] = rows("lm_head.weight")
    return plan
