"""Flaws planted in good prose, the kind a web crawl is full of and a reader notices only
by reading: they are spread through the document, not announced by its first lines.

- ``misspellings``: about 10 % of the longer words get a typo (two letters swapped, one
  dropped, one doubled, or one replaced by a neighbour on the keyboard);
- ``swapped_words``: about 10 % of adjacent word pairs trade places;
- ``dropped_words``: about 10 % of the words are left out;
- ``shuffled_sentences``: the sentences of every paragraph of 3+ sentences in a random order;
- ``spliced``: the first half of the page's paragraphs followed by the second half of
  another page's (a scraper that stitched two pages together).

Only prose lines are touched: code blocks (indented lines, ``>>>`` sessions) and inline
code stay as they were, as they would on a real page. The builder plants the flaw; whether
the result is flawed *enough* to matter is for the text critic to decide (a few typos make
real words, a shuffle can keep a paragraph's order).
"""

from __future__ import annotations

import random
import re
from typing import Callable, Optional

FLAW_KINDS = ("misspellings", "swapped_words", "dropped_words", "shuffled_sentences", "spliced")
MISSPELL_RATE = 0.1
SWAP_RATE = 0.1
DROP_RATE = 0.1

_CODE_LINE = re.compile(r"^(?: {4}|\t|>>> |\.\.\. )")
_KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
_NEIGHBOURS = {}
for _row_index, _row in enumerate(_KEYBOARD):
    for _i, _c in enumerate(_row):
        _NEIGHBOURS[_c] = (_row[_i - 1] if _i else "") + (_row[_i + 1] if _i + 1 < len(_row) else "")


def _map_prose_lines(text: str, fn: Callable[[str], str]) -> str:
    """Apply ``fn`` to every prose line (not code lines, not blank lines)."""
    return "\n".join(line if not line.strip() or _CODE_LINE.match(line) else fn(line)
                     for line in text.split("\n"))


def typo(word: str, rng: random.Random) -> str:
    """One typing mistake in ``word`` (4+ letters)."""
    i = rng.randrange(1, len(word) - 1)  # keep the first letter, as most typos do
    kind = rng.randrange(4)
    if kind == 0 and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:
        return word[:i] + word[i + 1:]
    if kind == 2:
        return word[:i] + word[i] + word[i:]
    neighbours = _NEIGHBOURS.get(word[i].lower(), "")
    return word[:i] + (rng.choice(neighbours) if neighbours else word[i]) + word[i + 1:]


_WORD_IN_LINE = re.compile(r"(?<![`\w.\0\1])([A-Za-z]{4,})(?![`\w(\0\1])")


def misspell(text: str, rng: random.Random, rate: float = MISSPELL_RATE) -> str:
    def line_fn(line: str) -> str:
        return _WORD_IN_LINE.sub(lambda m: typo(m.group(1), rng) if rng.random() < rate else m.group(1), line)
    return _unprotect(_map_prose_lines(_protect_code(text), line_fn))


def _protect_code(text: str) -> str:
    # Inline code spans become runs the word pattern cannot enter ("\0" stands for "`").
    return re.sub(r"`[^`\n]*`", lambda m: "\0" + m.group(0)[1:-1].replace(" ", "\1") + "\0", text)


def _unprotect(text: str) -> str:
    return text.replace("\0", "`").replace("\1", " ")


def swap_words(text: str, rng: random.Random, rate: float = SWAP_RATE) -> str:
    def line_fn(line: str) -> str:
        indent = line[: len(line) - len(line.lstrip())]
        words = line.split()
        i = 0
        while i < len(words) - 1:
            if rng.random() < rate:
                words[i], words[i + 1] = words[i + 1], words[i]
                i += 2
            else:
                i += 1
        return indent + " ".join(words)
    return _unprotect(_map_prose_lines(_protect_code(text), line_fn))


def drop_words(text: str, rng: random.Random, rate: float = DROP_RATE) -> str:
    def line_fn(line: str) -> str:
        indent = line[: len(line) - len(line.lstrip())]
        words = line.split()
        kept = [w for w in words if rng.random() >= rate] or words[:1]
        return indent + " ".join(kept)
    return _unprotect(_map_prose_lines(_protect_code(text), line_fn))


_SENTENCE = re.compile(r"(?<=[.!?:])\s+(?=[A-Z`\"(])")


def shuffle_sentences(text: str, rng: random.Random) -> str:
    """Each prose paragraph of 3+ sentences with its sentences in a new random order."""
    out = []
    for block in re.split(r"(\n\s*\n)", text):
        lines = block.split("\n")
        if not block.strip() or any(_CODE_LINE.match(line) for line in lines if line.strip()):
            out.append(block)
            continue
        indent = lines[0][: len(lines[0]) - len(lines[0].lstrip())]
        sentences = _SENTENCE.split(" ".join(line.strip() for line in lines if line.strip()))
        if len(sentences) >= 3:
            original = list(sentences)
            for _ in range(5):  # a shuffle that leaves the order as it was is no flaw
                rng.shuffle(sentences)
                if sentences != original:
                    break
            block = indent + " ".join(sentences)
        out.append(block)
    return "".join(out)


def splice(text: str, other: str) -> str:
    """The first half of ``text``'s paragraphs, then the second half of ``other``'s."""
    mine = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    theirs = [p for p in re.split(r"\n\s*\n", other) if p.strip()]
    head = mine[: max(1, (len(mine) + 1) // 2)]
    tail = theirs[len(theirs) // 2:] or theirs
    return "\n\n".join(p.strip("\n") for p in head + tail).strip() + "\n"


def plant(text: str, kind: str, rng: random.Random, other: Optional[str] = None,
          rate: Optional[float] = None) -> str:
    """``text`` with one flaw of ``kind`` (``spliced`` needs ``other``, a different page).
    ``rate`` is the share of words a word-level flaw touches (default: each kind's 10 %)."""
    if rate is not None and not 0 < rate < 1:
        raise ValueError(f"flaw rate must be in (0, 1), got {rate}")
    if kind == "misspellings":
        return misspell(text, rng, MISSPELL_RATE if rate is None else rate)
    if kind == "swapped_words":
        return swap_words(text, rng, SWAP_RATE if rate is None else rate)
    if kind == "dropped_words":
        return drop_words(text, rng, DROP_RATE if rate is None else rate)
    if kind == "shuffled_sentences":
        return shuffle_sentences(text, rng)
    if kind == "spliced":
        if other is None:
            raise ValueError("a spliced document needs a second page")
        return splice(text, other)
    raise ValueError(f"unknown flaw {kind!r}; kinds are {', '.join(FLAW_KINDS)}")
