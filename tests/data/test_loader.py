"""The micro-batch stream on gloo (megatron_ixt/data/loader.py): tensor-parallel rank 0 loads
and broadcasts, middle pipeline stages load nothing (the tokens only under document masks),
each stage gets only the fields it uses, every batch equals the dataset indexed directly,
and DataLoader workers change nothing. One 4-process torchrun runs all layouts
(tests/scripts/loader_probe.py)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # a 4-process torchrun

from tests.launch import run_torchrun

INPUTS = ["position_ids", "tokens"]
TARGETS = ["labels", "loss_mask", "orphan_mask", "prefix_mask", "text_mask"]


@pytest.fixture(scope="module")
def probe(ixt_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("loader")
    run_torchrun(4, "tests/scripts/loader_probe.py", ["--data-prefix", ixt_corpus["prefix"], "--tokenizer-model",
                                                     ixt_corpus["tokenizer"], "--out", out], timeout=900)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(4)]
    return {layout: [r[layout] for r in ranks] for layout in ranks[0]}


def test_every_batch_is_the_dataset_s_and_workers_change_nothing(probe):
    for layout, ranks in probe.items():
        for r in ranks:
            assert r["mismatches"] == 0, (layout, r)
            assert r["differ_with_workers"] == 0, (layout, r)


def test_parallel_layout_answers_as_megatron_core(probe):
    """The ParallelLayout the modules are given holds megatron-core's own sizes, ranks,
    groups and stage predicates, at every layout (interleaved included) and rank."""
    for layout, ranks in probe.items():
        for r in ranks:
            assert r["layout_mismatches"] == [], (layout, r)


def test_tensor_parallel_rank_0_loads_and_broadcasts(probe):
    for layout in ("tp2_pp2", "tp2_dp2"):
        for r in probe[layout]:
            loads = r["tp_rank"] == 0
            assert r["opened_loader"] is loads, (layout, r)
            assert (r["samples_read"] > 0) is loads, (layout, r)
            assert r["batches"] > 0, (layout, r)  # the peer received them all the same
    # tp2_pp2: the first stage gets the inputs, the last stage the targets (no token levels in training).
    by_stage = {r["pp_rank"]: r["fields"][0] for r in probe["tp2_pp2"]}
    assert by_stage == {0: INPUTS, 1: TARGETS}


def test_middle_pipeline_stages_load_nothing(probe):
    for r in probe["pp4"]:
        middle = r["pp_rank"] in (1, 2)
        assert r["opened_loader"] is not middle and (r["samples_read"] == 0) is middle, r
        assert r["fields"] == [[] if middle else (INPUTS if r["pp_rank"] == 0 else TARGETS)], r
        if r["pp_rank"] == 3:  # validation reports the text loss per quality level
            assert r["valid_fields"] == [sorted(TARGETS + ["token_level"])]


def test_document_masks_give_every_stage_the_tokens(probe):
    for r in probe["pp4_documents"]:
        assert r["opened_loader"] and r["samples_read"] > 0, r
        want = {0: INPUTS, 3: sorted(TARGETS + ["tokens"])}.get(r["pp_rank"], ["tokens"])
        assert r["fields"] == [want], r


def test_interleaved_chunks_share_one_read(probe):
    for r in probe["pp2_interleaved"]:
        # Rank 0 holds virtual stages 0 and 2, rank 1 stages 1 and 3 of four.
        want = [INPUTS, []] if r["pp_rank"] == 0 else [[], TARGETS]
        assert r["fields"] == want, r
        # Each sample read once although the schedule asks per chunk (3 steps x 2 micro-batches x 2).
        assert r["samples_read"] == 12, r
