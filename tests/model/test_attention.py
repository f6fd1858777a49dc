"""The torch attention (SDPA / FlexAttention) against megatron-core's unfused
``DotProductAttention``: forward outputs and gradients, causal and with document masks, with
and without grouped-query attention.

The reference mask comes from megatron-core's own ``GPTDataset`` mask builder
(``_get_ltor_masks_and_position_ids`` with ``reset_attention_mask``), not from our code.

Tolerance: both compute softmax(QK^T / sqrt(d)) V in fp32; the reference materialises the
scores and sums in one order, SDPA's CPU kernel works in key blocks with an online softmax.
Measured (printed with -s): at most 1.4e-6 absolute difference on outputs and gradients
whose largest entries are 1.3-5.8, i.e. ~3e-7 relative, a few fp32 ulps. We allow 1e-5
absolute + 1e-5 relative, 5-10x that. A wrong mask (one document seeing another) moves the
output by more than 1e-2 (asserted below), three orders above the tolerance.
"""

from __future__ import annotations

import datetime

import pytest
import torch

from megatron_ixt.model.attention import (
    TorchCoreAttention, _block_mask, attention_inputs, document_causal_mask, document_ids, packed_sequence_params)

EOD = 0
S, B, HEAD_DIM = 48, 2, 16


@pytest.fixture(scope="module")
def megatron_tp1():
    """One-process gloo group and megatron-core's model-parallel state at TP=PP=1 on CPU."""
    from megatron.core import parallel_state

    from megatron_ixt.runtime import cpu_compat

    created = not torch.distributed.is_initialized()
    if created:
        torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0,
                                             world_size=1, timeout=datetime.timedelta(minutes=2))
    cpu_compat.activate()
    parallel_state.initialize_model_parallel(1, 1)
    from megatron_ixt.runtime.distributed import seed_everything

    seed_everything(0)
    yield
    parallel_state.destroy_model_parallel()
    if created:
        torch.distributed.destroy_process_group()


def transformer_config(heads: int, groups: int):
    from megatron.core.transformer import TransformerConfig

    return TransformerConfig(num_layers=1, hidden_size=heads * HEAD_DIM, num_attention_heads=heads,
                             num_query_groups=groups, kv_channels=HEAD_DIM, attention_dropout=0.0,
                             use_cpu_initialization=True, masked_softmax_fusion=False)


def tokens_with_documents() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 50, (B, S), generator=g)
    tokens[0, [5, 19, 20, 40]] = EOD  # includes an empty document (two EODs in a row)
    tokens[1, [30]] = EOD
    return tokens


def megatron_mask(tokens: torch.Tensor) -> torch.Tensor:
    """megatron-core's own document mask, [b, 1, s, s], True = masked."""
    from megatron.core.datasets.gpt_dataset import _get_ltor_masks_and_position_ids

    masks = [_get_ltor_masks_and_position_ids(t, EOD, True, True, False, True)[0] for t in tokens]
    return torch.stack(masks)


def qkv(heads: int, groups: int):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(S, B, heads, HEAD_DIM, generator=g)
    k = torch.randn(S, B, groups, HEAD_DIM, generator=g)
    v = torch.randn(S, B, groups, HEAD_DIM, generator=g)
    return [t.requires_grad_() for t in (q, k, v)]


def run(module, mask, heads, groups):
    q, k, v = qkv(heads, groups)
    out = module(q, k, v, mask)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)  # a loss whose gradient touches every output
    (out * weights).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("heads, groups", [(4, 4), (4, 2)], ids=["mha", "gqa"])
@pytest.mark.parametrize("documents", [False, True], ids=["causal", "documents"])
def test_torch_attention_equals_megatron_unfused(megatron_tp1, heads, groups, documents):
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    config = transformer_config(heads, groups)
    tokens = tokens_with_documents()
    # megatron-core: None means causal; a mask needs the padding type (see model/gpt.py).
    reference = DotProductAttention(config, 1, AttnMaskType.padding if documents else AttnMaskType.causal, "self")
    ref_mask = megatron_mask(tokens) if documents else None
    torch_attention = TorchCoreAttention(config, 1, AttnMaskType.causal, "self")
    ours_mask = document_ids(tokens, EOD) if documents else None

    expected = run(reference, ref_mask, heads, groups)
    got = run(torch_attention, ours_mask, heads, groups)
    for name, a, b in zip(("output", "dq", "dk", "dv"), got, expected):
        diff = (a - b).abs().max().item()
        print(f"{name}: max abs difference {diff:.1e} (scale {b.abs().max().item():.2f})")
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"{name} differs")
    if documents:  # the mask matters: without it the result is far off
        unmasked = run(torch_attention, None, heads, groups)[0]
        assert (unmasked - expected[0]).abs().max() > 1e-2


def test_flex_attention_forward_equals_megatron(megatron_tp1):
    """FlexAttention's document mask (the CUDA kernel's path; forward only: no CPU backward)."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    config = transformer_config(4, 2)
    tokens = tokens_with_documents()
    reference = DotProductAttention(config, 1, AttnMaskType.padding, "self")
    flex = TorchCoreAttention(config, 1, AttnMaskType.causal, "self", kernel="flex")
    q, k, v = (t.detach() for t in qkv(4, 2))
    with torch.no_grad():
        expected = reference(q, k, v, megatron_mask(tokens))
        got = flex(q, k, v, document_ids(tokens, EOD))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_masks_from_document_ids():
    tokens = tokens_with_documents()
    ids = document_ids(tokens, EOD)
    assert ids[0, :6].tolist() == [0] * 6 and ids[0, 6] == 1 and ids[0, 20] == 2 and ids[0, 21] == 3
    assert torch.equal(document_causal_mask(ids), ~megatron_mask(tokens))
    block = _block_mask(ids)
    assert torch.equal(block.to_dense().bool().any(), torch.tensor(True))
    # The representations the plan can ask for.
    assert attention_inputs(tokens, EOD, "none") == (None, None)
    assert torch.equal(attention_inputs(tokens, EOD, "ids")[0], ids)
    assert torch.equal(attention_inputs(tokens, EOD, "dense")[0], megatron_mask(tokens))


def test_packed_sequence_boundaries():
    """THD boundaries for Transformer Engine: one packed sequence per document per sample,
    the micro-batch flattened; consecutive samples never merge."""
    tokens = tokens_with_documents()
    params = packed_sequence_params(document_ids(tokens, EOD))
    # sample 0: docs end at EODs 5, 19, 20, 40, then the tail; sample 1: EOD at 30, then the tail.
    expected = [0, 6, 20, 21, 41, 48, 48 + 31, 96]
    assert params.cu_seqlens_q.tolist() == expected and params.cu_seqlens_q.dtype == torch.int32
    assert params.max_seqlen_q == 31 and params.qkv_format == "thd"
    assert params.cu_seqlens_kv is params.cu_seqlens_q


# -- FlexAttention against SDPA at the shapes IXT trains (tests/test_gpu.py runs these on CUDA) --

DOCUMENT_LENGTHS = (300, 90, 700, 40, 128, 256, 17, 517)
"""Documents of one 2048-token sample: some longer than FlexAttention's 128-token block, some
shorter, one exactly a block, so the block mask has full, partial and skipped blocks."""


def document_ids_of(lengths, s: int, b: int = 2, device="cpu") -> torch.Tensor:
    """``[b, s]`` ids; the second sample's documents in reverse order (other boundaries)."""
    rows = []
    for order in (lengths, lengths[::-1])[:b]:
        ids = torch.repeat_interleave(torch.arange(len(order)), torch.tensor(order))
        rows.append(torch.cat([ids, ids.new_full((s - len(ids),), len(order))])[:s] if len(ids) < s else ids[:s])
    return torch.stack(rows).to(device)


def flex_against_sdpa(device: str, dtype: torch.dtype, s: int = 2048, heads: int = 16, groups: int = 4,
                      head_dim: int = 128, backward: bool = True) -> dict:
    """FlexAttention with the block mask of ``attention._block_mask`` against SDPA with the
    boolean document-causal mask (GQA); max |difference| of the outputs (and gradients)."""
    from megatron_ixt.model.attention import _block_mask, _flex_attention_for, document_causal_mask

    torch.manual_seed(0)
    ids = document_ids_of(DOCUMENT_LENGTHS, s, device=device)
    q = torch.randn(2, heads, s, head_dim, device=device, dtype=dtype, requires_grad=backward)
    k = torch.randn(2, groups, s, head_dim, device=device, dtype=dtype, requires_grad=backward)
    v = torch.randn(2, groups, s, head_dim, device=device, dtype=dtype, requires_grad=backward)
    block_mask = _block_mask(ids)
    flex = _flex_attention_for(torch.device(device))(q, k, v, block_mask=block_mask, enable_gqa=True)
    reference = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=document_causal_mask(ids), enable_gqa=True)
    out = {"output": (flex.float() - reference).abs().max().item(),
           "blocks": _block_kinds(block_mask)}
    if backward:
        grad = torch.randn_like(reference)
        flex_grads = torch.autograd.grad(flex.float(), (q, k, v), grad)
        reference_grads = torch.autograd.grad(reference, (q, k, v), grad)
        out["grads"] = max((a.float() - b.float()).abs().max().item() for a, b in zip(flex_grads, reference_grads))
    return out


def _block_kinds(block_mask) -> dict:
    """How many (query block, key block) pairs are full, partial and skipped."""
    full = int(block_mask.full_kv_num_blocks.sum()) if block_mask.full_kv_num_blocks is not None else 0
    partial = int(block_mask.kv_num_blocks.sum())
    n = block_mask.kv_num_blocks.shape[-1]
    total = block_mask.kv_num_blocks.shape[0] * n * n  # [B, H=1, q blocks]: per batch, q blocks x kv blocks
    return {"full": full, "partial": partial, "skipped": total - full - partial}


def test_flex_attention_against_sdpa_on_cpu():
    """The comparison tests/test_gpu.py makes at s=2048 in bf16 and fp32 on CUDA, forward only
    and at s=1024 here (FlexAttention has no CPU backward in torch 2.13)."""
    result = flex_against_sdpa("cpu", torch.float32, s=1024, heads=4, groups=2, head_dim=32, backward=False)
    assert result["output"] < 1e-5
    blocks = result["blocks"]
    assert blocks["full"] > 0 and blocks["partial"] > 0 and blocks["skipped"] > 0, blocks


@pytest.mark.parametrize("queries", [1, 3])
def test_a_decode_step_with_a_cache_attends_to_every_cached_key(megatron_tp1, queries):
    """With a KV cache the queries are the last positions of the keys: one decode query
    attends to every cached key (megatron-core marks such a step ``no_mask``), several new
    queries see the cache and their own causal triangle, aligned bottom-right. SDPA's
    ``is_causal`` aligns the triangle top-left: a decode step would see key 0 only."""
    from megatron.core.transformer.enums import AttnMaskType

    keys, heads, groups = 7, 4, 2
    attention = TorchCoreAttention(transformer_config(heads, groups), 1, AttnMaskType.causal, "self")
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(queries, B, heads, HEAD_DIM, generator=generator)
    k, v = (torch.randn(keys, B, groups, HEAD_DIM, generator=generator) for _ in range(2))
    mask_type = AttnMaskType.no_mask if queries == 1 else AttnMaskType.causal
    out = attention(q, k, v, None, attn_mask_type=mask_type).view(queries, B, heads, HEAD_DIM)
    # By hand: query i sits at position keys - queries + i and sees keys 0 .. that position.
    kk, vv = (t.repeat_interleave(heads // groups, dim=2) for t in (k, v))
    scores = torch.einsum("qbhd,kbhd->bhqk", q, kk) / HEAD_DIM ** 0.5
    visible = torch.arange(keys)[None, :] <= (keys - queries + torch.arange(queries))[:, None]
    expected = torch.einsum("bhqk,kbhd->qbhd", scores.masked_fill(~visible, float("-inf")).softmax(-1), vv)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    if queries == 1:  # the trap: a top-left triangle lets the query see key 0 alone
        assert (out - vv[:1].expand_as(out)).abs().max() > 1e-2
