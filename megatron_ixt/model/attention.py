"""Core attention without Transformer Engine, and how document boundaries reach a kernel.

megatron-core's local ``DotProductAttention`` materialises ``[b, heads, s, s]`` scores and
probabilities (about 36 GiB for the 1b preset at s=4096). :class:`TorchCoreAttention` is a
drop-in for it in the layer spec that calls PyTorch's fused kernels instead:

- no document masks: ``F.scaled_dot_product_attention(is_causal=True)`` (flash attention on
  CUDA, a fused kernel on CPU); no mask exists anywhere;
- document masks on CUDA: FlexAttention with a block-sparse document-causal mask, built once
  per micro-batch from per-token document ids and shared by every layer;
- document masks on CPU (FlexAttention has no CPU backward in torch 2.13), or with attention
  dropout (FlexAttention has none): SDPA with a boolean ``[b, 1, s, s]`` mask, also built once
  per micro-batch. SDPA does not build scores from it on CPU.

Batches never carry an ``[s, s]`` mask: document boundaries travel as per-token document ids
(:func:`document_ids`), and :func:`attention_inputs` turns them into what the planned kernel
needs (``megatron_ixt.runtime.kernels`` decides which).
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import _yarn_get_concentration_factor_from_config
from megatron.core.transformer import attention as megatron_attention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide

from megatron_ixt.runtime.kernels import current_device


def document_ids(tokens: torch.Tensor, eod: int) -> torch.Tensor:
    """``[b, s]`` index of the document each token belongs to inside its sample; an EOD
    token belongs to the document it ends (as megatron-core's ``reset_attention_mask``)."""
    is_eod = (tokens == eod).to(torch.int32)
    return torch.cumsum(is_eod, dim=1, dtype=torch.int32) - is_eod


def document_causal_mask(ids: torch.Tensor) -> torch.Tensor:
    """``[b, 1, s, s]`` boolean, True where query ``i`` may attend to key ``j``: ``j <= i``
    inside the same document."""
    s = ids.shape[-1]
    causal = torch.ones(s, s, dtype=torch.bool, device=ids.device).tril_()
    return (ids.unsqueeze(2) == ids.unsqueeze(1)).logical_and_(causal).unsqueeze(1)


def packed_sequence_params(ids: torch.Tensor) -> PackedSeqParams:
    """megatron-core's THD ``PackedSeqParams`` for a ``[b, s]`` micro-batch flattened to one
    sequence of ``b * s`` tokens: one packed sequence per document per sample."""
    b, s = ids.shape
    # Offset each sample's ids so that documents of consecutive samples never merge.
    flat = (ids.to(torch.int64) + torch.arange(b, device=ids.device).unsqueeze(1) * (s + 1)).reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    cu_seqlens = torch.cat([starts.nonzero().view(-1), flat.new_tensor([b * s])]).to(torch.int32)
    max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())  # a host sync, as in Megatron-LM
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                           max_seqlen_q=max_seqlen, max_seqlen_kv=max_seqlen)


def document_ids_from_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """``[b, s]`` document index of each token where documents start at position 0 (SFT
    samples: each conversation, and the padding, restart their position ids)."""
    return torch.cumsum((position_ids == 0).to(torch.int32), dim=1, dtype=torch.int32) - 1


def attention_inputs(tokens: torch.Tensor, eod: int, document_masks: str,
                     position_ids: Optional[torch.Tensor] = None):
    """``(attention_mask, packed_seq_params)`` for the model, per the plan's ``document_masks``,
    with the document boundaries at the EOD tokens, or where ``position_ids`` restart when given:
    ``none`` -> (None, None); ``ids`` -> (document ids, None) for :class:`TorchCoreAttention`;
    ``dense`` -> (megatron-core's ``[b, 1, s, s]`` mask, True = masked, None);
    ``packed`` -> (None, THD params; the caller flattens the micro-batch to ``[1, b * s]``)."""
    if document_masks == "none":
        return None, None
    ids = document_ids(tokens, eod) if position_ids is None else document_ids_from_positions(position_ids)
    if document_masks == "ids":
        return ids, None
    if document_masks == "dense":
        return ~document_causal_mask(ids), None
    if document_masks == "packed":
        return None, packed_sequence_params(ids)
    raise ValueError(f"unknown document mask representation {document_masks!r}")


def _causal_over_cache(queries: int, keys: int, attn_mask_type) -> tuple:
    """``(attn_mask, is_causal)`` for SDPA without document masks. With a KV cache
    (megatron-core's inference context) the keys are the cached positions followed by the
    queries' own, so query ``i`` sits at position ``keys - queries + i``: the causal triangle
    is aligned bottom-right. SDPA's ``is_causal`` aligns it top-left, which for one decode
    query against ``keys`` cached keys would let it see key 0 only. megatron-core marks a
    decode step ``no_mask``; a square ``no_mask`` call is bidirectional, as it asks."""
    if queries == keys:
        return None, attn_mask_type != AttnMaskType.no_mask
    if queries == 1:
        return None, False  # the one new token attends to everything before it
    return causal_lower_right(queries, keys), False


_flex_attention = None


def _flex_attention_for(device: torch.device):
    """FlexAttention compiled to a fused kernel on CUDA. On CPU (tests only: the plan never
    chooses FlexAttention there, it has no CPU backward) the eager version, same math."""
    global _flex_attention
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if _flex_attention is None:
        _flex_attention = torch.compile(flex_attention, dynamic=False)
    return _flex_attention


class _MaskCache:
    """The mask of the current micro-batch, built from its document ids once and shared by
    every layer (all layers receive the same ids tensor)."""

    def __init__(self) -> None:
        self.ids: Optional[torch.Tensor] = None
        self.kind: Optional[str] = None
        self.mask = None

    def get(self, ids: torch.Tensor, kind: str):
        if ids is not self.ids or kind != self.kind:
            self.ids, self.kind = ids, kind
            self.mask = _block_mask(ids) if kind == "flex" else document_causal_mask(ids)
        return self.mask


def _block_mask(ids: torch.Tensor):
    from torch.nn.attention.flex_attention import create_block_mask

    def document_causal(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (ids[b, q_idx] == ids[b, kv_idx])

    b, s = ids.shape
    # Compiled on CUDA: built eagerly, the mask's transient memory grows with s^2 (its
    # [b, s, s] predicate), compiled it is built block by block.
    return create_block_mask(document_causal, B=b, H=None, Q_LEN=s, KV_LEN=s, device=ids.device,
                             _compile=ids.device.type == "cuda")


_MASKS = _MaskCache()


class TorchCoreAttention(MegatronModule):
    """Core attention (softmax(QK^T / sqrt(d)) V, causal, GQA) on PyTorch's fused kernels,
    with the constructor and forward signature of megatron-core's ``DotProductAttention``.

    ``attention_mask`` may be None (causal), per-token document ids (``[b, s]`` integers)
    or megatron-core's boolean ``[b, 1, s, s]`` mask (True = masked). ``kernel`` is the plan's
    choice for document masks: ``flex`` (FlexAttention) or ``sdpa`` (SDPA with a boolean mask)."""

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type, attention_type: str,
                 attention_dropout: Optional[float] = None, softmax_scale: Optional[float] = None,
                 cp_comm_type: Optional[str] = None, pg_collection=None, kernel: str = "sdpa") -> None:
        super().__init__(config=config)
        self.kernel = kernel
        if config.context_parallel_size != 1:
            raise ValueError("the torch attention has no context parallelism; use Transformer Engine")
        if config.apply_query_key_layer_scaling:
            raise ValueError("the torch attention does not implement apply_query_key_layer_scaling")
        if config.softmax_type != "vanilla":
            raise ValueError(f"the torch attention has no {config.softmax_type!r} softmax")
        if pg_collection is not None:
            tp = pg_collection.tp.size()
        else:
            from megatron.core import parallel_state

            tp = parallel_state.get_tensor_model_parallel_world_size()
        self.heads = divide(config.num_attention_heads, tp)
        self.groups = divide(config.num_query_groups or config.num_attention_heads, tp)
        head_dim = divide(config.kv_channels * config.num_attention_heads, config.num_attention_heads)
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("the torch attention takes document ids, not packed sequences or an attention bias")
        # [s, b, heads, d] -> [b, heads, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        gqa = self.heads != self.groups
        dropout = self.dropout if self.training else 0.0
        if attention_mask is not None and attention_mask.dtype != torch.bool and self.kernel == "flex":
            if dropout:
                raise ValueError("FlexAttention has no attention dropout")
            block_mask = _MASKS.get(attention_mask, "flex")
            out = _flex_attention_for(q.device)(q, k, v, block_mask=block_mask, scale=self.softmax_scale,
                                                enable_gqa=gqa)
        else:
            if attention_mask is None:
                mask, causal = _causal_over_cache(q.shape[2], k.shape[2], attn_mask_type)
            elif attention_mask.dtype == torch.bool:
                mask, causal = ~attention_mask, False  # megatron-core's convention: True = masked
            else:
                mask, causal = _MASKS.get(attention_mask, "dense"), False
            with self._dropout_rng(dropout):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal,
                                                     scale=self.softmax_scale, enable_gqa=gqa)
        # [b, heads, s, d] -> [s, b, heads * d]
        return out.permute(2, 0, 1, 3).reshape(out.shape[2], out.shape[0], -1)

    def _dropout_rng(self, dropout: float):
        """Attention dropout inside tensor-parallel regions draws from the tensor-parallel RNG
        stream, as megatron-core's DotProductAttention does (not under sequence parallelism)."""
        if dropout and not self.config.sequence_parallel:
            return tensor_parallel.get_cuda_rng_tracker().fork()
        return contextlib.nullcontext()


class SelfAttention(megatron_attention.SelfAttention):
    """megatron-core's ``SelfAttention``, whose static KV cache holds keys already rotated.

    On its static inference path (``StaticInferenceContext``), megatron-core caches the keys
    before RoPE and rotates the whole cache again at every decode step: with a 256-token
    cache that was 57% of a decode step of SmolLM2-135M on CPU (batch 64). Its dynamic engine
    and its flash decoding rotate each key once, before caching it; this does the same on the
    static path, so a step's RoPE costs what its new tokens cost. Training and every other
    path are megatron-core's own.

    The cache starts zeroed (megatron-core's is uninitialised): a left-padded row never writes
    its positions before its start, and a masked key's value still enters the attention's
    product with weight 0, which an uninitialised NaN would turn into NaN. Under the torch
    attention it is laid out ``[batch, kv heads, sequence, head dim]`` and viewed in
    megatron-core's ``[sequence, batch, kv heads, head dim]`` order, so that SDPA reads each
    head's keys as one block, as transformers' cache is laid out (a decode step of SmolLM2-135M
    at batch 64: 25% less time in attention)."""

    def _allocate_memory(self, inference_max_sequence_length, batch_size, dim, dtype):
        if not isinstance(self.core_attention, TorchCoreAttention):
            return super()._allocate_memory(inference_max_sequence_length, batch_size, dim, dtype).zero_()
        memory = torch.zeros(batch_size, self.num_query_groups_per_partition, inference_max_sequence_length, dim,
                             dtype=dtype, device=current_device())
        return memory.permute(2, 0, 1, 3)

    def _adjust_key_value_for_inference(self, inference_context, query, key, value, rotary_pos_emb,
                                        rotary_pos_cos=None, rotary_pos_sin=None, rotary_pos_cos_sin=None,
                                        sequence_len_offset=None, **kwargs):
        if (inference_context is None or rotary_pos_emb is None or self.config.flash_decode
                or not inference_context.is_static_batching()):
            return super()._adjust_key_value_for_inference(
                inference_context, query, key, value, rotary_pos_emb, rotary_pos_cos, rotary_pos_sin,
                rotary_pos_cos_sin, sequence_len_offset, **kwargs)
        q_pos_emb, k_pos_emb = rotary_pos_emb
        start = inference_context.sequence_len_offset
        end = start + key.size(0)
        if k_pos_emb is not None:
            key = apply_rotary_pos_emb(key, k_pos_emb[start:end], config=self.config,
                                       mscale=_yarn_get_concentration_factor_from_config(self.config),
                                       cp_group=self.pg_collection.cp)
        query, key, value, _, mask_type, block_table = super()._adjust_key_value_for_inference(
            inference_context, query, key, value, None, rotary_pos_cos, rotary_pos_sin, rotary_pos_cos_sin,
            sequence_len_offset, **kwargs)
        # The query still rotates in megatron-core's forward, at the new tokens' positions.
        return query, key, value, (None if q_pos_emb is None else q_pos_emb[start:end], None), mask_type, block_table
