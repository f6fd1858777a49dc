"""The IXT dataset against a brute-force reference on real preprocessed data: every
token's loss mask (include/exclude), prefix and level flags, dropout, cooldown,
repeat-prefix packing, document-aware masks; dropout determinism and rate; blends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from megatron.core.datasets import helpers
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_ixt.format.indexed_io import read_side_file
from megatron_ixt.data.ixt_dataset import IXTDataset, IXTDatasetConfig
from megatron_ixt.tokenizers.build import build_tokenizer

SEQ = 64


# -- readable references of the compiled kernels (data/packing.py), checked against them -----


def uniform_hash(seed: int, documents: np.ndarray, epochs: np.ndarray) -> np.ndarray:
    """The readable reference of ``packing.dropout_flags``' draw: deterministic uniforms in
    [0, 1) per (seed, document, epoch), splitmix64 finaliser over the packed key.
    Independent of split, order and parallel layout."""
    with np.errstate(over="ignore"):
        x = (np.asarray(documents, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             ^ (np.asarray(epochs, dtype=np.uint64) + np.uint64(1)) * np.uint64(0xBF58476D1CE4E5B9)
             ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x94D049BB133111EB))
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def repeat_numbers(occurrences: np.ndarray) -> np.ndarray:
    """Per occurrence, how many times its document occurred before it: its epoch."""
    seen: dict = {}
    out = np.empty(len(occurrences), dtype=np.int64)
    for i, doc in enumerate(occurrences.tolist()):
        out[i] = seen.get(doc, 0)
        seen[doc] = out[i] + 1
    return out


def pack_samples(sizes: np.ndarray, prefix_insert: "np.ndarray | None", seq_length: int,
                 add_extra_token: int = 1) -> np.ndarray:
    """The readable reference of the compiled ``packing.pack`` (which the dataset uses): Megatron's greedy packing
    (``helpers.build_sample_idx``) in Python, over occurrences
    ``0..len(sizes)-1``, optionally paying for re-inserted prefixes.

    ``prefix_insert[i]`` is the prefix length of occurrence ``i`` (0: nothing to insert). A
    sample that starts at offset ``e > 0`` inside occurrence ``i`` begins with
    ``min(e, prefix_insert[i])`` re-inserted prefix tokens, which take room in the sample.
    Returns ``[num_samples + 1, 2]`` (occurrence, offset) boundaries; only complete samples.
    """
    boundaries = [(0, 0)]
    doc, offset, n = 0, 0, len(sizes)
    while True:
        remaining = seq_length + add_extra_token
        if prefix_insert is not None and offset > 0:
            remaining -= min(offset, int(prefix_insert[doc]))
            if remaining <= add_extra_token:  # the prefix alone fills the sample: no progress possible
                raise ValueError(f"--ixt-repeat-prefix: a {int(prefix_insert[doc])}-token prefix does not fit in a "
                                 f"{seq_length}-token sample with room for text")
        while remaining > 0:
            doc_length = int(sizes[doc]) - offset
            remaining -= doc_length
            if remaining <= 0:
                offset += remaining + doc_length - add_extra_token
                remaining = 0
            else:
                doc += 1
                offset = 0
                if doc == n:
                    return np.array(boundaries, dtype=np.int64)
        boundaries.append((doc, offset))


def build(corpus, tmp_path, num_samples=400, split="100,0,0", blend=None, **ixt):
    tokenizer = build_tokenizer("SentencePieceTokenizer", tokenizer_model=corpus["tokenizer"])
    config = IXTDatasetConfig(
        random_seed=1234, sequence_length=SEQ, blend=blend or ([corpus["prefix"]], None), split=split,
        path_to_cache=str(tmp_path / "cache"), tokenizer=tokenizer, reset_position_ids=True,
        reset_attention_mask=True, eod_mask_loss=False, create_attention_mask=True, **ixt)
    datasets = BlendedMegatronDatasetBuilder(IXTDataset, [num_samples, 0, 0], lambda: True, config).build()
    return datasets[0], tokenizer


def reference_stream(ds):
    """Brute force: the occurrences of the dataset laid end to end, with per-token flags."""
    raw = IndexedDataset(ds.dataset.path_prefix)
    side = read_side_file(ds.dataset.path_prefix)
    tokens, prefix, level, doc_start, prefix_len = [], [], [], [], []
    for occ, doc in enumerate(ds.document_index):
        seq = raw[int(doc)].astype(np.int64)
        p = int(side[doc, 0])
        skip = p if ds.prefix_dropped[occ] else 0
        body = seq[skip:]
        tokens.append(body)
        prefix.append(np.arange(skip, len(seq)) < (0 if skip else p))
        level.append(np.full(len(body), side[doc, 1]))
        doc_start.append(np.arange(len(body)) == 0)
        prefix_len.append(np.full(len(body), 0 if skip else p))
    cat = lambda xs: np.concatenate(xs)  # noqa: E731
    return cat(tokens), cat(prefix), cat(level), cat(doc_start), cat(prefix_len)


def reference_masks(tokens, eod):
    """Causal attention that stops at EOD tokens, positions restarting after each EOD."""
    n = len(tokens)
    allowed = np.zeros((n, n), dtype=bool)
    positions = np.zeros(n, dtype=np.int64)
    segment_start = 0
    for i in range(n):
        allowed[i, segment_start:i + 1] = True
        positions[i] = i - segment_start
        if tokens[i] == eod:
            segment_start = i + 1
    return allowed, positions


@pytest.mark.parametrize("prefix_loss", ["include", "exclude"])
def test_every_token_matches_the_reference(ixt_corpus, tmp_path, prefix_loss):
    ds, tok = build(ixt_corpus, tmp_path, ixt_prefix_loss=prefix_loss, ixt_feedback_dropout=0.3)
    stream, prefix, level, doc_start, _ = reference_stream(ds)
    for k in range(0, len(ds), 7):
        p = int(ds.shuffle_index[k])
        window = slice(p * SEQ, p * SEQ + SEQ + 1)
        sample = ds[k]
        np.testing.assert_array_equal(sample["tokens"].numpy(), stream[window][:-1])
        np.testing.assert_array_equal(sample["labels"].numpy(), stream[window][1:])
        label_prefix = prefix[window][1:]
        np.testing.assert_array_equal(sample["prefix_mask"].numpy(), label_prefix.astype(np.float32))
        expected_loss = np.ones(SEQ) if prefix_loss == "include" else (~label_prefix).astype(np.float32)
        np.testing.assert_array_equal(sample["loss_mask"].numpy(), expected_loss)
        np.testing.assert_array_equal(sample["token_level"].numpy(), level[window][1:])
        allowed, positions = reference_masks(stream[window][:-1], tok.eod)
        np.testing.assert_array_equal(~sample["attention_mask"][0].numpy(), allowed)  # True = masked
        np.testing.assert_array_equal(sample["position_ids"].numpy(), positions)
        # Text of a document that began in an earlier sample is "orphaned" when it has a prefix.
        first_doc = ~np.logical_or.accumulate(doc_start[window])
        np.testing.assert_array_equal(sample["orphan_mask"].numpy() > 0,
                                      (first_doc & ~prefix[window] & (_starts_mid(ds, p)))[1:])


def _starts_mid(ds, p):
    occ, off = (int(x) for x in ds.sample_index[p])
    doc = int(ds.document_index[occ])
    return off > 0 and ds.dataset.prefix_lengths[doc] > 0 and not ds.prefix_dropped[occ]


def test_dropout_is_deterministic_and_hits_its_rate(ixt_corpus, tmp_path):
    rate = 0.3
    a, _ = build(ixt_corpus, tmp_path / "a", num_samples=8000, ixt_feedback_dropout=rate)
    b, _ = build(ixt_corpus, tmp_path / "b", num_samples=8000, ixt_feedback_dropout=rate)
    np.testing.assert_array_equal(a.prefix_dropped, b.prefix_dropped)
    annotated = a.dataset.prefix_lengths[a.document_index] > 0
    n = int(annotated.sum())
    observed = a.prefix_dropped[annotated].mean()
    assert abs(observed - rate) < 4 * np.sqrt(rate * (1 - rate) / n), (observed, n)
    assert not a.prefix_dropped[~annotated].any()
    # Each (document, epoch) decides independently: the same document differs across epochs.
    epochs = repeat_numbers(a.document_index)
    assert epochs.max() >= 1
    u = uniform_hash(1234, a.document_index, epochs)
    np.testing.assert_array_equal(a.prefix_dropped, annotated & (u < rate))


def test_cooldown_samples_have_no_prefix_and_come_last(ixt_corpus, tmp_path):
    ds, _ = build(ixt_corpus, tmp_path, num_samples=400, ixt_cooldown_fraction=0.25, ixt_feedback_dropout=0.0)
    start = int(0.75 * 400)
    before = [ds[k]["prefix_mask"].sum().item() for k in range(start)]
    after = [ds[k]["prefix_mask"].sum().item() for k in range(start, len(ds))]
    assert sum(after) == 0 and sum(before) > 0


def test_repeat_prefix_reinserts_and_loses_nothing(ixt_corpus, tmp_path):
    ds, _ = build(ixt_corpus, tmp_path, ixt_repeat_prefix=True, ixt_feedback_dropout=0.2)
    stream, _, _, _, _ = reference_stream(ds)
    raw = IndexedDataset(ds.dataset.path_prefix)
    pieces = []
    inverse = np.argsort(np.asarray(ds.shuffle_index))
    for p in range(min(len(ds), 600)):  # packing order; 600 samples cover ~80 documents
        k = int(inverse[p])
        sample, parts = ds[k], ds.sample_parts(k)
        text = np.concatenate([sample["tokens"].numpy(), sample["labels"].numpy()[-1:]])
        doc, _, _, _, inserted = parts[0]
        if inserted:  # the sample opens with the document's own prefix tokens, marked as prefix
            np.testing.assert_array_equal(text[:inserted], raw[doc][:inserted])
            assert sample["prefix_mask"].numpy()[:inserted - 1].all()
        assert sample["orphan_mask"].sum() == 0
        pieces.append(text[inserted:] if p == 0 else text[inserted + 1:])  # samples overlap by one token
    rebuilt = np.concatenate(pieces)
    np.testing.assert_array_equal(rebuilt, stream[:len(rebuilt)])


def test_python_packer_equals_megatron_helper():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 300, size=500).astype(np.int32)
    expected = helpers.build_sample_idx(sizes, np.arange(500, dtype=np.int32), SEQ, 1, int(sizes.sum()), True, 1)
    np.testing.assert_array_equal(pack_samples(sizes, None, SEQ), expected)


@pytest.fixture
def process_group(tmp_path):
    """megatron-core's blended dataset asks torch.distributed for the rank."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def test_blend_follows_weights(ixt_corpus, tmp_path, process_group):
    blend = ([ixt_corpus["prefix"], ixt_corpus["prefix"]], [0.7, 0.3])
    ds, _ = build(ixt_corpus, tmp_path, num_samples=1000, blend=blend)
    shares = np.bincount(np.asarray(ds.dataset_index[:1000]), minlength=2) / 1000
    np.testing.assert_allclose(shares, [0.7, 0.3], atol=0.01)
    assert set(ds[0]) >= {"tokens", "prefix_mask", "loss_mask"}


def test_vectorised_masks_equal_megatron_core():
    from megatron.core.datasets.gpt_dataset import _get_ltor_masks_and_position_ids

    from megatron_ixt.data.ixt_dataset import document_masks

    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        tokens = torch.randint(0, 6, (50,), generator=g)  # token 0 is EOD: many documents per sample
        for flags in [(True, True, False, True), (False, True, True, True), (True, False, True, True),
                      (False, False, False, False)]:
            expected = _get_ltor_masks_and_position_ids(tokens.clone(), 0, *flags)
            for want, got in zip(expected, document_masks(tokens.clone(), 0, *flags)):
                assert (want is None and got is None) or torch.equal(want, got), flags


def test_repeat_prefix_refuses_prefixes_that_fill_a_sample():
    sizes = np.array([200, 200], dtype=np.int32)
    with pytest.raises(ValueError, match="does not fit"):
        pack_samples(sizes, np.array([64, 64]), SEQ)


@pytest.mark.parametrize("extra", [0, 1])
def test_compiled_packer_equals_python_reference_and_megatron_helper(extra):
    from megatron_ixt.data import packing

    rng = np.random.default_rng(1)
    for _ in range(25):
        n, seq = int(rng.integers(1, 300)), int(rng.integers(8, 80))
        lengths = rng.integers(1, 120, n).astype(np.int32)
        prefixes = np.minimum(np.where(rng.random(n) < 0.6, rng.integers(0, min(seq - 1, 10) + 1, n), 0),
                              lengths - 1).astype(np.int32)
        epochs = int(rng.integers(1, 4))
        occurrences = np.tile(np.arange(n, dtype=np.int32), epochs)
        rng.shuffle(occurrences)
        rate, seed = float(rng.choice([0.0, 0.3, 1.0])), int(rng.integers(0, 2**40))
        dropped = packing.dropout_flags(occurrences, prefixes, seed, rate)
        expected = (prefixes[occurrences] > 0) & (uniform_hash(seed, occurrences, repeat_numbers(occurrences)) < rate)
        np.testing.assert_array_equal(dropped, expected)
        sizes = (lengths[occurrences] - np.where(dropped, prefixes[occurrences], 0)).astype(np.int32)
        insert = np.where(dropped, 0, prefixes[occurrences])
        np.testing.assert_array_equal(packing.pack(occurrences, lengths, prefixes, dropped, seq, extra, True),
                                      pack_samples(sizes, insert, seq, extra))
        plain = packing.pack(occurrences, lengths, prefixes, dropped, seq, extra, False)
        np.testing.assert_array_equal(plain, pack_samples(sizes, None, seq, extra))
        megatron = helpers.build_sample_idx(sizes, np.arange(len(sizes), dtype=np.int32), seq, 1, int(sizes.sum()),
                                            True, bool(extra))
        np.testing.assert_array_equal(plain, megatron)
        assert plain.dtype == megatron.dtype


def test_compiled_packer_refuses_prefixes_that_fill_a_sample():
    from megatron_ixt.data import packing

    lengths, prefixes = np.array([200, 200], dtype=np.int32), np.array([64, 64], dtype=np.int32)
    with pytest.raises(ValueError, match="does not fit"):
        packing.pack(np.arange(2, dtype=np.int32), lengths, prefixes, np.zeros(2, bool), SEQ, 1, True)


@pytest.mark.parametrize("ixt", [{}, {"ixt_feedback_dropout": 0.5, "ixt_repeat_prefix": True},
                                 {"ixt_cooldown_fraction": 0.5}])
def test_epochs_in_closed_form_cover_the_samples(ixt_corpus, tmp_path, ixt):
    """One packing over the closed-form epoch count yields enough samples; without dropout or
    cooldown the count is GPTDataset's (the fewest epochs whose tokens cover the request)."""
    probe, _ = build(ixt_corpus, tmp_path / "probe", num_samples=10)
    per_epoch = int(probe.dataset.sequence_lengths[probe.indices].sum())
    num_samples = 3 * per_epoch // SEQ + 1  # needs 4 epochs: 3 full ones are just short of it
    ds, _ = build(ixt_corpus, tmp_path / "ds", num_samples=num_samples, **ixt)
    assert len(ds) >= num_samples
    epochs = len(ds.document_index) // len(ds.indices)
    if not ixt:
        assert epochs == -(-(num_samples * SEQ + 1) // per_epoch) == 4


def test_a_documents_repeats_drop_their_prefix_independently():
    """megatron-core shuffles all epochs together, so a document's repeats land anywhere: over
    200 epochs the number of its repeats without a prefix must spread as 200 independent draws
    do (binomial variance). Keyed on the position's epoch (``i // documents``), repeats that
    land in the same stretch shared one draw, which doubled the variance."""
    from megatron.core.datasets.gpt_dataset import _build_document_index

    from megatron_ixt.data import packing

    documents, epochs, rate = 500, 200, 0.3
    occurrences = _build_document_index(np.arange(documents, dtype=np.int32), epochs,
                                         np.random.RandomState(5), False)
    dropped = packing.dropout_flags(occurrences, np.full(documents, 4, dtype=np.int32), 1234, rate)
    per_document = np.bincount(occurrences, weights=dropped, minlength=documents)
    assert abs(per_document.mean() / epochs - rate) < 0.01
    ratio = per_document.var(ddof=1) / (epochs * rate * (1 - rate))
    print(f"variance of dropped repeats per document / binomial variance: {ratio:.2f}")
    assert 0.75 < ratio < 1.3, ratio  # sampling spread at 500 documents: about +-0.13 (2 sd)
