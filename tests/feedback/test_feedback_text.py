"""The text critic: good prose (Python's own reference topics) passes, junk is named."""

from __future__ import annotations

import random

from pydoc_data.topics import topics

from corpus.prose import chunk_paragraphs, degrade
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


# --- the reading signals: each planted flaw is caught by the rule meant for it -------------

from collections import Counter  # noqa: E402

import pytest  # noqa: E402

from megatron_ixt.feedback import text_signals  # noqa: E402
from corpus.flaws import FLAW_KINDS, plant  # noqa: E402

# flaw -> (the rule meant to catch it, the least share of flawed pieces it must flag). The
# shares are about 70-80 % of those measured on these pieces (docs/demo.md), so a rule that
# stops working fails here; dropped words and shuffled sentences are the hard cases.
CATCHERS = {"misspellings": ("dictionary_misses", 0.75), "swapped_words": ("word_order", 0.5),
            "dropped_words": ("word_order", 0.14), "spliced": ("topic_shift", 0.45)}
READING_RULES = ("dictionary_misses", "word_order", "topic_shift", "sentence_order")


@pytest.fixture(scope="module")
def pieces():
    # All of Python's reference topics in 1,500-character pieces (the demo's size): 365 pieces.
    return [piece for name in sorted(topics) for piece in chunk_paragraphs(topics[name], 1500)]


def test_clean_prose_rarely_trips_the_reading_rules(pieces):
    fired = Counter(rule.name for piece in pieces for rule, _ in CRITIC.evaluate(piece))
    for rule in READING_RULES:
        assert fired[rule] / len(pieces) < 0.1, (rule, fired[rule], len(pieces))
    levels = [CRITIC.critique({"text": piece}).level for piece in pieces]
    assert sum(level >= 4 for level in levels) / len(levels) > 0.75


@pytest.mark.parametrize("flaw", sorted(CATCHERS))
def test_each_flaw_is_caught_by_its_rule(pieces, flaw):
    rule, least = CATCHERS[flaw]
    rng = random.Random(0)
    caught = clean_fired = changed = 0
    for i, piece in enumerate(pieces):
        flawed = plant(piece, flaw, rng, pieces[(i + len(pieces) // 2) % len(pieces)])
        if flawed == piece:
            continue
        changed += 1
        failed = {r.name: v for r, v in CRITIC.evaluate(flawed)}
        caught += rule in failed
        clean_fired += rule in {r.name for r, _ in CRITIC.evaluate(piece)}
    assert changed > 0.9 * len(pieces)
    assert caught / changed >= least, (flaw, caught, changed)
    assert caught > 3 * clean_fired, (flaw, caught, clean_fired)  # it reads the flaw, not the page


# At the demo's flaw rate (25 % of words: examples/demo/run_demo.py) the word-level flaws are
# plainer to their rules; measured 92 %, 91 % and 58 % on these pieces (docs/demo.md).
DEMO_RATE_CATCHERS = {"misspellings": ("dictionary_misses", 0.8), "swapped_words": ("word_order", 0.75),
                      "dropped_words": ("word_order", 0.45)}


@pytest.mark.parametrize("flaw", sorted(DEMO_RATE_CATCHERS))
def test_each_flaw_is_caught_by_its_rule_at_the_demo_rate(pieces, flaw):
    rule, least = DEMO_RATE_CATCHERS[flaw]
    rng = random.Random(0)
    flawed = [f for f in (plant(piece, flaw, rng, rate=0.25) for piece in pieces)]
    caught = sum(rule in {r.name for r, _ in CRITIC.evaluate(f)} for f in flawed)
    assert caught / len(flawed) >= least, (flaw, caught, len(flawed))


def test_critique_names_the_flaw_and_lowers_the_level(pieces):
    rng = random.Random(1)
    good = [p for p in pieces if CRITIC.critique({"text": p}).level == 5 and len(p.split()) > 150][:5]
    for flaw, phrase in (("misspellings", "not in an English dictionary"), ("swapped_words", "function-word")):
        verdicts = [CRITIC.critique({"text": plant(piece, flaw, rng)}) for piece in good]
        named = [v for v in verdicts if phrase in v.critique]
        assert len(named) >= 3, (flaw, [v.critique for v in verdicts])
        assert all(v.level <= 3 for v in named), [v.critique for v in named]


def test_word_order_signal_on_known_sentences():
    clean = "The value of the attribute is returned to the caller, and it is cached for later use. " * 6
    swapped = "The of value the attribute is returned the to caller, and is it cached for later use. " * 6
    assert text_signals.function_word_error_rate(clean)[0] == 0.0
    assert text_signals.function_word_error_rate(swapped)[0] > 0.05
    # Code is not prose: pairs inside inline code and indented code lines do not count.
    assert text_signals.function_word_error_rate("Call `the of` here.\n\n    x = the of\n")[0] == 0.0


def test_sentence_order_signal_on_a_moved_back_reference():
    paragraph = ("A list holds items in order. It can grow and shrink. However, it is not thread safe. "
                 "This matters for programs that share one list.")
    moved = ("However, it is not thread safe. A list holds items in order. It can grow and shrink. "
             "This matters for programs that share one list.")
    assert text_signals.opening_connective_share("\n\n".join([paragraph] * 3))[0] == 0.0
    assert text_signals.opening_connective_share("\n\n".join([moved] * 3))[0] == 1.0


def test_spelling_ignores_code_and_repeated_terms():
    words = text_signals.dictionary()
    text = ("The frobnicator frobnicator is configured with `qzxv_value` options.\n\n"
            "    zzqq = blorp()\n\nThe weather is nice today and the garden is green.")
    share, checked = text_signals.dictionary_miss_share(text, words)
    assert share == 0.0 and checked > 5
    share, _ = text_signals.dictionary_miss_share("The wether is nicce todya and the gardn is grene.", words)
    assert share > 0.4


def test_missing_dictionary_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(text_signals.DICTIONARY_ENV, str(tmp_path / "no-such-list"))
    with pytest.raises(text_signals.DictionaryMissing, match="apt-get install -y wamerican wbritish"):
        TextCritic()
    assert TextCritic(skip_rules=["dictionary_misses"]).critique({"text": prose("naming")}).level >= 4


@pytest.mark.parametrize("flaw", FLAW_KINDS)
def test_flaws_leave_code_alone(flaw):
    text = ("Use the `sorted` function when you want a new list back from the call.\n\n"
            "    result = sorted(values, key=len)\n    print(result)\n\n"
            "The original list is left unchanged by this call. It returns a new list. "
            "The key function is called once per item.\n")
    other = "Another page talks about files.\n\nIt opens them and reads them line by line, closing them after.\n"
    flawed = plant(text, flaw, random.Random(5), other)
    assert flawed != text
    if flaw != "spliced":
        assert "    result = sorted(values, key=len)\n    print(result)" in flawed and "`sorted`" in flawed
