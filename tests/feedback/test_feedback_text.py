"""The text critic: good prose (Python's own reference topics) passes, junk is named."""

from __future__ import annotations

import random

from pydoc_data.topics import topics

from megatron_ixt.feedback.corpus.prose import chunk_paragraphs, degrade
from megatron_ixt.feedback.text_critic import RULE_NAMES, TextCritic

CRITIC = TextCritic()
GOOD_TOPICS = ("assert", "class", "exceptions", "for", "if", "import", "naming", "while")


def prose(name: str) -> str:
    return chunk_paragraphs(topics[name], 3000)[0]


def test_good_prose_passes():
    for name in GOOD_TOPICS:
        verdict = CRITIC.critique({"text": prose(name)})
        assert verdict.level >= 4, (name, verdict.critique)
    verdict = CRITIC.critique({"text": prose("naming")})
    assert verdict.critique.startswith(f"Passes all {len(RULE_NAMES)} web-text quality rules")
    assert set(verdict.axes) == {"writing_style", "efficiency"}  # it judges only what it can


def test_most_reference_prose_scores_high():
    pieces = [piece for name in sorted(topics) for piece in chunk_paragraphs(topics[name], 3000)]
    levels = [CRITIC.critique({"text": piece}).level for piece in pieces]
    assert sum(level >= 4 for level in levels) / len(levels) > 0.8


def test_degraded_prose_is_flagged_with_named_rules():
    rng = random.Random(0)
    expected = {"repeated_lines": "duplicate_", "keyword_list": "stop_word", "truncated_lines": "ellipsis_lines"}
    for kind, rule in expected.items():
        for name in GOOD_TOPICS:
            verdict = CRITIC.critique({"text": degrade(prose(name), kind, rng)})
            assert verdict.level <= 3, (kind, name, verdict.critique)
            assert verdict.critique.startswith("Fails") and rule in verdict.critique, verdict.critique


def test_web_junk_is_flagged():
    cases = {
        "lorem_ipsum": "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 12,
        "digit_ratio": "\n".join(f"{i} 3.1415{i} 27182{i} 1618{i} 4{i}0.{i}" for i in range(60)),
        "duplicate_lines": "Click here to subscribe to our newsletter today!\n" * 30 + "The end of the story.",
        "too_short": "Buy now. Cheap. Best price.",
        "bullet_lines": "\n".join(f"- item number {i} in the list of things" for i in range(40)),
        "mean_word_length": " ".join(["antidisestablishmentarianism-supercalifragilistic"] * 60) + ".",
    }
    for rule, text in cases.items():
        verdict = CRITIC.critique({"text": text})
        assert f"{rule}:" in verdict.critique, (rule, verdict.critique)
        assert verdict.level <= 3, (rule, verdict.critique)


def test_rules_can_be_skipped():
    text = "Buy now. Cheap. Best price."
    assert "too_short" not in TextCritic(skip_rules=["too_short"]).critique({"text": text}).critique
