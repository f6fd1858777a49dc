"""Prefix templates, quality levels and the prefix token ids used at evaluation time."""

from __future__ import annotations

import pytest

from megatron_ixt.format.document import Feedback
from megatron_ixt.format.levels import QualityThresholds, quality_level
from megatron_ixt.format.prefixes import (
    builtin_templates,
    feedback_for_level,
    load_template,
    prefix_token_ids,
    render_prefix,
)
from megatron_ixt.tokenizers.build import build_tokenizer

FEEDBACK = {
    "score": 7.5, "scale": [0, 10],
    "axes": {"writing_style": 7, "expertise": 8, "educational_value": 6, "factual_accuracy": 9, "efficiency": 7},
    "critique": "Correct and idiomatic; no docstring.",
}


def test_builtin_templates_are_versioned_data():
    assert builtin_templates() == ["critique", "none", "quality"]
    for name in builtin_templates():
        template = load_template(name)
        identity = template.identity()
        assert identity["name"] == name and identity["version"] >= 1
        assert len(identity["sha256"]) == 64


def test_quality_levels_follow_the_contract():
    # level = 1 + min(4, floor(5 * (score - min) / (max - min)))
    assert [quality_level(s) for s in (0, 1.99, 2, 3.9, 4, 6, 7.99, 8, 10)] == [1, 1, 2, 2, 3, 4, 4, 5, 5]
    assert quality_level(50, (0, 100)) == 3
    assert quality_level(-1, (-1, 1)) == 1 and quality_level(1, (-1, 1)) == 5
    with pytest.raises(ValueError):
        quality_level(11)
    fixed = QualityThresholds.fixed()
    assert all(fixed.level(s / 10, (0, 1)) == quality_level(s / 10, (0, 1)) for s in range(11))


def test_quantile_thresholds_balance_the_levels():
    # A judge that only uses the top of its scale: fixed fifths put everything in 4-5.
    scores = [7 + 3 * i / 999 for i in range(1000)]
    assert {quality_level(s) for s in scores} == {4, 5}
    quantile = QualityThresholds.from_scores([s / 10 for s in scores])
    counts = [0] * 6
    for s in scores:
        counts[quantile.level(s)] += 1
    assert counts[0] == 0 and all(190 <= c <= 210 for c in counts[1:])
    assert QualityThresholds.from_dict(quantile.to_dict()) == quantile


def test_render_quality():
    assert render_prefix("quality", 4) == "Quality: 4/5"
    assert render_prefix("quality", FEEDBACK) == "Quality: 4/5"
    assert render_prefix("quality", {"score": 80, "scale": [0, 100]}) == "Quality: 5/5"
    with pytest.raises(ValueError, match="1..5"):
        render_prefix("quality", 6)
    with pytest.raises(ValueError):
        render_prefix("quality", "some critique")


def test_render_critique():
    assert render_prefix("critique", FEEDBACK) == (
        "Score: 7.5/10\n"
        "Writing style 7/10, Expertise 8/10, Educational value 6/10, Factual accuracy 9/10, Efficiency 7/10\n"
        "Critique: Correct and idiomatic; no docstring."
    )
    # Other scales are shown on the template's display scale; missing parts drop their line.
    assert render_prefix("critique", {"score": 3, "scale": [1, 5]}) == "Score: 5/10"
    assert render_prefix("critique", "Clear and correct.") == "Critique: Clear and correct."
    assert render_prefix("critique", Feedback(score=10.0, critique="Best.")) == "Score: 10/10\nCritique: Best."
    with pytest.raises(ValueError, match="feedback_for_level"):
        render_prefix("critique", 5)
    best = render_prefix("critique", feedback_for_level(5, critique="Exemplary."))
    assert best.startswith("Score: 9/10\nWriting style 9/10") and best.endswith("Critique: Exemplary.")


def test_render_none():
    assert render_prefix("none", 5) == "" and render_prefix("none", FEEDBACK) == ""


def test_custom_template_file(tmp_path):
    path = tmp_path / "short.yaml"
    path.write_text("name: short\nversion: 3\nkind: critique\nlines: ['{score}/10 {critique}']\n")
    template = load_template(str(path))
    assert template.identity()["version"] == 3 and template.identity()["source"] == str(path)
    assert render_prefix(template, FEEDBACK) == "7.5/10 Correct and idiomatic; no docstring."
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nversion: 1\nkind: quality\nlines: ['{critique}']\n")
    with pytest.raises(ValueError, match="may use"):
        load_template(str(bad))
    with pytest.raises(ValueError, match="unknown prefix template"):
        load_template("no-such-template")


def test_prefix_token_ids_wrap_the_text_in_delimiters(sp_model):
    tokenizer = build_tokenizer("SentencePieceTokenizer", sp_model)
    ids = prefix_token_ids(tokenizer, "quality", 5)
    assert ids[0] == tokenizer.feedback_open_id and ids[-1] == tokenizer.feedback_close_id
    assert tokenizer.detokenize(ids[1:-1]) == "Quality: 5/5"
    assert tokenizer.detokenize(ids) == "<|feedback|>Quality: 5/5<|/feedback|>"
    assert prefix_token_ids(tokenizer, "none", 5) == []
    best, worst = prefix_token_ids(tokenizer, "quality", 5), prefix_token_ids(tokenizer, "quality", 1)
    assert best != worst and len(best) == len(worst)
    critique = prefix_token_ids(tokenizer, "critique", FEEDBACK)
    assert tokenizer.detokenize(critique[1:-1]) == render_prefix("critique", FEEDBACK)


def test_preprocessing_and_inference_build_prefix_ids_in_one_place(sp_model, tmp_path):
    """prefix_ids_of_texts (preprocessing's batched path) gives prefix_token_ids' ids, the
    template's token budget included."""
    from megatron_ixt.format.prefixes import prefix_ids_of_texts

    tokenizer = build_tokenizer("SentencePieceTokenizer", sp_model)
    feedbacks = [FEEDBACK, {"score": 2, "critique": "Wrong. " * 40}, {"score": 9.5}]
    template = load_template("critique")
    batched = prefix_ids_of_texts(tokenizer, template, [render_prefix(template, f) for f in feedbacks])
    assert [ids.tolist() for ids in batched] == [prefix_token_ids(tokenizer, template, f) for f in feedbacks]
    assert all(ids.dtype == "int64" for ids in batched)

    budget = tmp_path / "short.yaml"
    budget.write_text("name: short\nversion: 1\nkind: critique\nmax_tokens: 5\nlines: ['Critique: {critique}']\n")
    short = load_template(str(budget))
    ids = prefix_token_ids(tokenizer, short, feedbacks[1])
    assert len(ids) == 5 + 2 and ids[0] == tokenizer.feedback_open_id and ids[-1] == tokenizer.feedback_close_id
    assert prefix_ids_of_texts(tokenizer, short, [render_prefix(short, feedbacks[1])])[0].tolist() == ids
