"""The SFT dataset (megatron_ixt/data/sft_dataset.py) on real conversations (``sft_corpus``):
whole conversations packed into samples, no attention between them (checked on the mask the
attention builds), loss on the assistant tokens only, feedback dropout per (conversation, epoch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder

from megatron_ixt.data.sft_dataset import SFTDataset, SFTDatasetConfig
from megatron_ixt.model.attention import document_causal_mask, document_ids_from_positions
from megatron_ixt.tokenizers.build import build_tokenizer
from megatron_ixt.tokenizers.chat import FEEDBACK, LOSS

SEQ = 512


def _dataset(corpus, tmp_path, num_samples=40, dropout=0.0):
    tokenizer = build_tokenizer("SentencePieceTokenizer", corpus["tokenizer"])
    config = SFTDatasetConfig(random_seed=1234, sequence_length=SEQ, blend=([corpus["prefix"]], None),
                              split="100,0,0", path_to_cache=str(tmp_path / "cache"), tokenizer=tokenizer,
                              reset_position_ids=True, reset_attention_mask=True, eod_mask_loss=False,
                              create_attention_mask=False, ixt_feedback_dropout=dropout)
    return BlendedMegatronDatasetBuilder(SFTDataset, [num_samples, 0, 0], lambda: True, config).build()[0]


def _part(ds):
    return getattr(ds, "datasets", [ds])[0]


def _stored_variants(prefix: str) -> dict:
    """{variant ids: its roles} of every conversation of the preprocessed files, read with
    megatron-core's IndexedDataset and the roles file, not through the SFT dataset."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_ixt.format.indexed_io import read_roles
    from megatron_ixt.tokenizers.chat import variant

    stored, roles = IndexedDataset(prefix), np.asarray(read_roles(prefix))
    variants, start = {}, 0
    for i in range(len(stored)):
        ids = np.asarray(stored[i], dtype=np.int64)
        for conditioned in (True, False):
            v, r = variant(ids, roles[start:start + len(ids)], conditioned)
            variants[tuple(v.tolist())] = r
        start += len(ids)
    return variants


def test_samples_pack_whole_conversations_without_attention_between_them(sft_corpus, tmp_path):
    ds = _dataset(sft_corpus, tmp_path)
    sft = _part(ds)
    variants = _stored_variants(sft_corpus["prefix"])
    eod = sft.config.tokenizer.eod
    assert len(ds) >= 40
    several = 0
    for idx in range(len(sft)):
        sample = sft[idx]
        tokens = torch.cat([sample["tokens"], sample["labels"][-1:]]).tolist()
        positions = torch.cat([sample["position_ids"], sample["position_ids"][-1:] + 1]).tolist()
        # The sample, cut where its position ids restart: each piece a stored conversation
        # (either variant) whole, or the start of one that fills the sample alone; then padding.
        starts = [i for i, p in enumerate(positions) if p == 0]
        pieces = [tokens[a:b] for a, b in zip(starts, starts[1:] + [len(tokens)])]
        padding = pieces[-1] if len(pieces) > 1 and tuple(pieces[-1]) not in variants else []
        conversations = pieces[:len(pieces) - bool(padding)]
        last = conversations[-1]
        if not padding and tuple(last) not in variants and last[-1] == eod and tuple(last[:-1]) in variants:
            conversations[-1], padding = last[:-1], [eod]  # one padding token: the label past the positions
        assert set(padding) <= {eod}
        expected_loss = []
        for piece in conversations:
            roles = variants.get(tuple(piece))
            if roles is None:  # cut at the end of a sample it fills alone
                assert len(conversations) == 1 and len(piece) == SEQ + 1
                roles = next(r for v, r in variants.items() if list(v[:len(piece)]) == piece)[:len(piece)]
            expected_loss += [float(r & LOSS != 0) for r in roles]
        expected_loss += [0.0] * len(padding)
        assert sample["loss_mask"].tolist() == expected_loss[1:]
        assert (sample["loss_mask"] * sample["prefix_mask"]).sum() == 0  # feedback never trains

        # The mask the attention kernel gets: query i sees key j only inside its own conversation.
        n = len(tokens) - len(padding)
        ids = document_ids_from_positions(sample["position_ids"].unsqueeze(0))
        allowed = document_causal_mask(ids)[0, 0]
        conversation_of = np.searchsorted(np.asarray(starts), np.arange(SEQ), side="right") - 1
        conversation_of[n:] = len(starts)  # the padding is a document of its own
        same = conversation_of[:, None] == conversation_of[None, :]
        assert allowed.tolist() == (np.tril(np.ones((SEQ, SEQ), dtype=bool)) & same).tolist()
        several += len(conversations) > 1
    assert several > 0  # short conversations share samples


@pytest.mark.parametrize("dropout", [0.0, 0.5, 1.0])
def test_feedback_dropout(sft_corpus, tmp_path, dropout):
    sft = _part(_dataset(sft_corpus, tmp_path, dropout=dropout))
    annotated = sft.dataset.feedback_lengths[sft.document_index] > 0
    share = float((~sft.conditioned[annotated]).mean())
    if dropout in (0.0, 1.0):
        assert share == dropout
    else:
        assert 0.35 < share < 0.65
    prefix_tokens = sum(float(sft[i]["prefix_mask"].sum()) for i in range(len(sft)))
    assert (prefix_tokens == 0) == (dropout == 1.0)
    # Unannotated conversations always train as they are.
    assert sft.conditioned[~annotated].all()


def test_sft_flag_and_data_must_agree(sft_corpus, ixt_corpus):
    from megatron_ixt.config import ConfigError, parse_config, validate
    from megatron_ixt.data.datasets import choose_dataset

    from tests.launch import TINY

    tokenizer = build_tokenizer("SentencePieceTokenizer", sft_corpus["tokenizer"])

    def cfg(*flags):
        c, _ = parse_config(["--config", str(TINY), "--tokenizer-type", "SentencePieceTokenizer",
                             "--tokenizer-model", sft_corpus["tokenizer"], *map(str, flags)])
        return c

    assert choose_dataset(cfg("--sft", "--data-path", sft_corpus["prefix"]), tokenizer)[0] is SFTDataset
    with pytest.raises(ConfigError, match=r"_text_document has no \.roles\.bin: SFT data are conversations"):
        choose_dataset(cfg("--sft", "--data-path", ixt_corpus["prefix"]), tokenizer)
    with pytest.raises(ConfigError, match=r"holds conversations \(tools/preprocess_data.py --sft\): train on it with --sft"):
        choose_dataset(cfg("--data-path", sft_corpus["prefix"]), tokenizer)
    with pytest.raises(ConfigError, match="--ixt-repeat-prefix and --ixt-cooldown-fraction are pretraining options"):
        validate(cfg("--sft", "--data-path", sft_corpus["prefix"], "--ixt-repeat-prefix"), 1, cuda=False)
