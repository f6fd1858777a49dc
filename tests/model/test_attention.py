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
    from megatron_ixt.runtime.distributed import _free_port

    created = not torch.distributed.is_initialized()
    if created:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0,
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
