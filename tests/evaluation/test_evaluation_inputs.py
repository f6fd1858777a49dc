"""evaluate_conditioning's inputs: sequences never longer than --seq-length, levels by the
training data's thresholds (quantiles when it used them), and the control prefixes of
tools/generate.py by template kind. A recording model stands in for the network: these
are properties of what is fed to it, not of its outputs."""

from __future__ import annotations

import pytest
import torch

from megatron_ixt.format.levels import QualityThresholds
from megatron_ixt.evaluation.conditioning import evaluate_conditioning
from megatron_ixt.evaluation.control import control_prefix


class ByteTokenizer:
    """UTF-8 bytes as ids, then EOD and the two feedback delimiters."""

    eod, feedback_open_id, feedback_close_id = 256, 257, 258
    vocab_size = 259

    def tokenize(self, text: str) -> list[int]:
        return list(text.encode())

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:  # the project's tokenizers have both
        return [self.tokenize(text) for text in texts]

    def detokenize(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode(errors="replace")


class RecordingModel:
    document_start_ids = [ByteTokenizer().eod]

    def text_start(self, prefix=()) -> list[int]:  # an eod model's: [EOD] prefix
        return [*self.document_start_ids, *prefix]

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []

    def token_losses(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.inputs.append(tokens.clone())
        return torch.ones(tokens.shape, dtype=torch.float32)


DOC = {"id": "d", "text": "x = 1\n" * 200, "feedback": {"score": 9.5, "scale": [0, 10], "critique": "Fine."}}


@pytest.mark.parametrize("seq_length", [24, 40, 64, 300])
def test_sequences_fit_seq_length_even_with_long_prefixes(seq_length):
    # The critique prefix of this document is ~90 tokens: longer than most of these lengths.
    model, tok = RecordingModel(), ByteTokenizer()
    result = evaluate_conditioning(model, tok, [DOC], "critique", seq_length)
    fed = max(t.shape[1] + 1 for t in model.inputs) if model.inputs else 0  # + 1: the shifted label
    assert fed <= seq_length
    if result.per_document:
        assert result.per_document[0]["tokens"] >= 2
    else:  # nothing fits: skipped and said so, not an over-long sequence
        assert result.summary()["skipped_prefix_too_long"] == 1
        assert "skipped 1 documents" in result.table()


def test_levels_follow_the_training_data_thresholds():
    tok = ByteTokenizer()
    quantile = QualityThresholds("quantile", (0.90, 0.92, 0.94, 0.96))  # 9.5 / 10 -> level 4 here, 5 fixed
    for thresholds, level in ((None, 5), (quantile, 4)):
        model = RecordingModel()
        result = evaluate_conditioning(model, tok, [DOC], "quality", 256, thresholds=thresholds)
        assert result.per_document[0]["level"] == level
        texts = [tok.detokenize(row.tolist()) for batch in model.inputs for row in batch]
        # own (its level) and best (5); worst is 1
        assert sorted(t.split("Quality: ")[1][0] for t in texts if "Quality: " in t) == sorted(f"{level}51")


def test_control_prefix_by_template_kind():
    tok = ByteTokenizer()
    quality = tok.detokenize(control_prefix(tok, "quality", 2))
    assert quality == "Quality: 2/5"
    critique = tok.detokenize(control_prefix(tok, "critique", 5, "Clear and correct."))
    assert critique.startswith("Score: 9/10") and critique.endswith("Critique: Clear and correct.")
    with pytest.raises(ValueError, match="--critique needs a critique template"):
        control_prefix(tok, "quality", 5, "Clear and correct.")
    assert control_prefix(tok, "none", 5) == []
