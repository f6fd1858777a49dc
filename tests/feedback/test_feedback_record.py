"""The feedback record (the contract in docs/DEVELOPING.md), levels, and building critics."""

from __future__ import annotations

import pytest

from megatron_ixt.feedback import AXES, CRITIC_NAMES, Feedback, NotApplicable, build_critic, quality_level
from megatron_ixt.feedback.auto import AutoCritic


def test_quality_levels_follow_the_contract():
    # level = 1 + min(4, floor(5 * (score - min) / (max - min)))
    assert [quality_level(s) for s in (0, 1.99, 2, 3.99, 4, 6, 8, 9.99, 10)] == [1, 1, 2, 2, 3, 4, 5, 5, 5]
    assert quality_level(0.5, (0, 1)) == 3
    # Out of scale is a broken record, not a level: it raises (critics clamp raw scores first).
    for score, scale in ((-3, (0, 10)), (11, (0, 10)), (5, (10, 0))):
        with pytest.raises(ValueError):
            quality_level(score, scale)


def test_one_definition_shared_with_the_data_package():
    from megatron_ixt.format import document, levels

    assert quality_level is levels.quality_level and Feedback is document.Feedback
    assert AXES == document.STANDARD_AXES


def test_record_format():
    feedback = Feedback(score=7.456, critique="Correct; no docstring.", judge="python-critic/1",
                        axes={"efficiency": 7.0, "writing_style": 6.5}, reasoning="private")
    assert feedback.to_record() == {"score": 7.46, "scale": [0, 10],
                                    "axes": {"writing_style": 6.5, "efficiency": 7},
                                    "critique": "Correct; no docstring.", "judge": "python-critic/1"}
    assert feedback.level == 4
    assert AXES == ("writing_style", "expertise", "educational_value", "factual_accuracy", "efficiency")
    for bad in (dict(score=11), dict(score=float("nan")), dict(score=5, axes={"clarity": "good"}),
                dict(score=5, axes={"expertise": -1})):
        with pytest.raises(ValueError):
            Feedback(critique="x", judge="j", **bad)


def test_build_critic_by_name():
    assert CRITIC_NAMES == ("llm", "python", "math", "text", "auto")
    assert build_critic("math").judge == "math-critic/1"
    assert build_critic("python", time_limit_s=2).limits.time_s == 2
    with pytest.raises(ValueError, match="unknown critic 'nope'; choose one of llm, python"):
        build_critic("nope")


def test_auto_dispatches_on_domain():
    auto = AutoCritic()
    assert auto.choose({"domain": "code"}) is auto.python
    assert auto.choose({"domain": "code", "language": "rust"}) is auto.text
    assert auto.choose({"domain": "math"}) is auto.math
    assert auto.choose({"domain": "prose"}) is auto.text and auto.choose({}) is auto.text
    verdict = auto.critique({"domain": "math", "text": "1+1 = <<1+1=2>>2\n#### 2", "reference_answer": "2"})
    assert verdict.judge == "math-critic/1" and verdict.level == 5
    with pytest.raises(NotApplicable):
        build_critic("math").critique({"domain": "code", "text": "x = 1"})
