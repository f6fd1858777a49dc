"""Signals of the text critic that read the words themselves, not only the layout:
spelling, word order and sentence order, and whether a document stays on one topic.

Each function returns one number per document; ``text_critic.py`` turns them into graded
rules with limits. Why each signal, and where it comes from:

* ``dictionary_miss_share``: share of ordinary lower-case words missing from an English
  word list (Debian's ``wamerican`` + ``wbritish``, ``/usr/share/dict``). Spell-checking
  against a word list is how web filters catch garbled and machine-mangled pages (CCNet and
  RedPajama use a language model's perplexity for the same purpose; a word list is the
  transparent, offline version). Technical text has words no dictionary knows
  (``iterable``, ``subclassing``): a word counts only when it occurs *once* in the
  document, because a typo is random and a technical term is repeated.
* ``function_word_error_rate``: adjacent function words that English grammar almost never
  puts side by side ("the of", "to is", "the the"), and a capitalised function word inside
  a sentence ("value The is"). Swapped and dropped words leave these traces; clean prose
  has almost none. This is the closed-class part of a part-of-speech n-gram check, which
  needs no tagger because function words are a closed list.
* ``misplaced_colon_share``: sentences that end in ":" (announcing a list, an example or a
  code block) but are not the last sentence of their paragraph. In well-formed prose what a
  colon announces follows it, so such a sentence ends its paragraph; shuffling sentences
  moves it inside. A local coherence signal in the spirit of Barzilay & Lapata's (2008)
  entity-grid idea: order is judged by what a sentence makes the reader expect next.
* ``opening_connective_share``: paragraphs whose first sentence starts with a word that
  refers back ("However", "This", "It", "Therefore", ...). A paragraph's first sentence
  rarely depends on a sentence before it; after shuffling it often does.
* ``adjacent_cohesion``: mean content-word overlap of adjacent sentences minus that of
  sentences further apart (lexical cohesion, Foltz, Kintsch & Landauer 1998): coherent
  prose repeats its words across neighbouring sentences more than across distant ones.
* ``topic_continuity``: the lowest cosine similarity between the content words before and
  after any paragraph boundary. A page spliced from two sources changes vocabulary at the
  seam; a page about one thing keeps its terms throughout.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

# Where Debian's word lists live; the first file that exists is enough, all found are used.
DICTIONARY_FILES = ("/usr/share/dict/american-english", "/usr/share/dict/british-english",
                    "/usr/share/dict/words")
DICTIONARY_ENV = "IXT_DICTIONARY"
"""Colon-separated word-list files that replace the defaults (one word per line)."""
INSTALL_HINT = "apt-get install -y wamerican wbritish"


class DictionaryMissing(RuntimeError):
    """No word list found: the spelling rule cannot run."""


@functools.lru_cache(maxsize=4)
def _load_words(files: tuple[str, ...]) -> frozenset[str]:
    words: set[str] = set()
    for name in files:
        with open(name, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                word = line.strip()
                if word:
                    words.add(word.lower())
                    if word.endswith("'s"):
                        words.add(word[:-2].lower())
    return frozenset(words)


def dictionary(files: Optional[Iterable[str]] = None) -> frozenset[str]:
    """The lower-cased English words of the word lists (``$IXT_DICTIONARY`` or Debian's)."""
    if files is None:
        env = os.environ.get(DICTIONARY_ENV)
        files = env.split(":") if env else DICTIONARY_FILES
    found = tuple(name for name in files if Path(name).is_file())
    if not found:
        raise DictionaryMissing(f"no English word list at {', '.join(files)}: install one ({INSTALL_HINT}; "
                                f"`make setup` does it as root), point ${DICTIONARY_ENV} at a word-list file, or "
                                "skip the rule (TextCritic(skip_rules=['dictionary_misses']))")
    return _load_words(found)


_SUFFIXES = ("'s", "s", "es", "ed", "d", "ing", "ly", "er", "ers", "est", "able", "ness", "ment")
# Inline code, and lines that are code (indented blocks, interactive sessions).
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_CODE_LINE = re.compile(r"^(?: {4}|\t|>>> |\.\.\. ).*$", re.M)
_PLAIN_WORD = re.compile(r"^[(\"']*([a-z]+(?:'[a-z]+)?)[)\"'.,;:!?]*$")


def prose_only(text: str) -> str:
    """``text`` without inline code and code lines: the part a spelling check can judge."""
    return _CODE_LINE.sub(" ", _CODE_SPAN.sub(" ", text))


def _known(word: str, words: frozenset[str]) -> bool:
    if word in words:
        return True
    for suffix in _SUFFIXES:  # inflections the lists leave out ("subclasses", "iterables")
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            stem = word[: -len(suffix)]
            if stem in words or stem + "e" in words or (len(stem) > 3 and stem[-1] == stem[-2]
                                                        and stem[:-1] in words):
                return True
    return False


def dictionary_miss_share(text: str, words: frozenset[str]) -> tuple[float, int]:
    """(share of checked words not in the list, words checked). A checked word is an
    all-lower-case alphabetic word of 3+ letters outside code that occurs once in the
    document (repeated unknown words are terms, not typos)."""
    candidates = []
    for token in prose_only(text).split():
        match = _PLAIN_WORD.match(token)
        if match and len(match.group(1)) >= 3:
            candidates.append(match.group(1))
    counts = Counter(candidates)
    misses = sum(1 for word in candidates if counts[word] == 1 and not _known(word, words))
    return (misses / len(candidates) if candidates else 0.0), len(candidates)


# --- word order ---------------------------------------------------------------------------

_DETERMINERS = frozenset({"the", "a", "an"})
_PREPOSITIONS = frozenset({"of", "to", "in", "on", "at", "by", "from", "with", "for", "into"})
_BE = frozenset({"is", "are", "was", "were"})
_MODALS = frozenset({"can", "will", "would", "should", "must", "may", "might", "could"})
_PRONOUNS = frozenset({"it", "he", "she", "they", "we", "i"})
_CONJUNCTIONS = frozenset({"and", "or", "but"})
# (first-word class, second-word class): pairs English grammar almost never writes.
_BAD_PAIRS = (
    (_DETERMINERS, _DETERMINERS | _PREPOSITIONS | _BE | _MODALS | _PRONOUNS | _CONJUNCTIONS | {"not", "has", "have"}),
    (_PREPOSITIONS, _BE | _MODALS | {"and", "but", "has", "have"}),
    (_BE, _BE | _MODALS),
    (_MODALS, _DETERMINERS | _BE | _MODALS | {"of"}),
    ({"to"}, _BE | {"of"}),
)
_DOUBLED = _DETERMINERS | _PREPOSITIONS | _BE | _MODALS | _CONJUNCTIONS | {"that", "not", "it"}
_CAPITALISED_FUNCTION = frozenset(w.capitalize() for w in _DETERMINERS | _PREPOSITIONS | _BE | _MODALS
                                  | _CONJUNCTIONS | {"it", "this", "these", "they", "we", "if", "when"})
_ABBREVIATIONS = frozenset({"e", "g", "i", "etc", "eg", "ie", "vs", "cf", "al", "approx", "no", "fig"})
_STOP_THEN_LOWER = re.compile(r"(?<![\w.])([a-z]+)[.!?] +([a-z]{3,})\b")
_TOKEN = re.compile(r"[A-Za-z]+|\n\s*\n|[^\sA-Za-z]")
_SENTENCE_END = frozenset(".!?:;")


def function_word_error_rate(text: str) -> tuple[float, int]:
    """(ungrammatical function-word pairs, mid-sentence capitalised function words and
    sentence ends followed by a lower-case word, per word; words looked at), over prose
    outside code."""
    prose = prose_only(text)
    tokens = _TOKEN.findall(prose)
    # "... returns the. value is": a sentence end moved inside a sentence.
    errors = sum(m.group(1) not in _ABBREVIATIONS for m in _STOP_THEN_LOWER.finditer(prose))
    words = 0
    previous: Optional[str] = None  # the previous word, None after punctuation
    after_boundary = True
    for token in tokens:
        if not token[0].isalpha():
            previous = None
            # A paragraph break may end a heading or a list item without punctuation.
            after_boundary = after_boundary or token in _SENTENCE_END or token[0] in "\n\"'(["
            continue
        words += 1
        lower = token.lower()
        if previous is not None:
            if lower == previous and lower in _DOUBLED:
                errors += 1
            else:
                for first, second in _BAD_PAIRS:
                    if previous in first and lower in second:
                        errors += 1
                        break
        if not after_boundary and token in _CAPITALISED_FUNCTION:
            errors += 1
        previous, after_boundary = lower, False
    return (errors / words if words else 0.0), words


# --- sentence order -------------------------------------------------------------------------

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?:])\s+(?=[A-Z`\"(])")
_CONNECTIVES = ("however", "therefore", "thus", "hence", "also", "this", "these", "those", "it", "its",
                "they", "their", "such", "otherwise", "instead", "then", "moreover", "furthermore",
                "similarly", "finally", "in this case", "in that case", "for example", "as a result",
                "in addition", "additionally", "consequently", "nevertheless", "likewise", "again")
_CONNECTIVE = re.compile(r"^(?:" + "|".join(re.escape(c) for c in _CONNECTIVES) + r")\b", re.I)


def prose_paragraphs(text: str) -> list[list[str]]:
    """Paragraphs of prose (code blocks and list-like lines dropped), each as sentences."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip() and not _CODE_LINE.match(line)]
        paragraph = " ".join(line.strip() for line in lines)
        if len(paragraph.split()) < 8 or paragraph.startswith(("*", "-", "+", "|")):
            continue
        out.append([s for s in _SENTENCE_SPLIT.split(paragraph) if s.strip()])
    return out


def misplaced_colon_share(text: str) -> tuple[float, int]:
    """(share of colon-ending sentences that are not last in their paragraph, such sentences)."""
    total = misplaced = 0
    for sentences in prose_paragraphs(text):
        for index, sentence in enumerate(sentences):
            if sentence.rstrip().endswith(":"):
                total += 1
                misplaced += index < len(sentences) - 1
    return (misplaced / total if total else 0.0), total


def opening_connective_share(text: str) -> tuple[float, int]:
    """(share of multi-sentence paragraphs that open with a back-referring word, such paragraphs)."""
    paragraphs = [s for s in prose_paragraphs(text) if len(s) >= 2]
    hits = sum(bool(_CONNECTIVE.match(sentences[0].lstrip("`\"("))) for sentences in paragraphs)
    return (hits / len(paragraphs) if paragraphs else 0.0), len(paragraphs)


def content_words(text: str, stop_words: frozenset[str]) -> list[str]:
    """Lower-cased words of 4+ letters that are not function words, cut to 6 letters (a
    crude stem: "returns", "returned" and "returning" count as one)."""
    return [w[:6] for w in re.findall(r"[a-z]{4,}", text.lower()) if w not in stop_words]


def adjacent_cohesion(text: str, stop_words: frozenset[str]) -> tuple[float, int]:
    """(mean Jaccard overlap of adjacent sentences minus that of sentences 2+ apart, within
    paragraphs of 3+ sentences; pairs compared)."""
    adjacent, distant = [], []
    for sentences in prose_paragraphs(text):
        if len(sentences) < 3:
            continue
        bags = [set(content_words(s, stop_words)) for s in sentences]
        for i in range(len(bags)):
            for j in range(i + 1, len(bags)):
                union = bags[i] | bags[j]
                if not union:
                    continue
                (adjacent if j == i + 1 else distant).append(len(bags[i] & bags[j]) / len(union))
    if not adjacent or not distant:
        return 0.0, 0
    return sum(adjacent) / len(adjacent) - sum(distant) / len(distant), len(adjacent) + len(distant)


def _cosine(a: Counter, b: Counter) -> float:
    dot = sum(count * b[word] for word, count in a.items())
    norm = math.sqrt(sum(c * c for c in a.values())) * math.sqrt(sum(c * c for c in b.values()))
    return dot / norm if norm else 0.0


def topic_continuity(text: str, stop_words: frozenset[str], min_words: int = 25) -> tuple[float, int]:
    """(lowest cosine similarity of content words before and after a paragraph boundary,
    boundaries compared); 1.0 when no boundary has ``min_words`` content words on each side."""
    blocks = [content_words(prose_only(block), stop_words) for block in re.split(r"\n\s*\n", text)]
    blocks = [b for b in blocks if b]
    lowest, compared = 1.0, 0
    for cut in range(1, len(blocks)):
        before = [w for b in blocks[:cut] for w in b]
        after = [w for b in blocks[cut:] for w in b]
        if len(before) < min_words or len(after) < min_words:
            continue
        compared += 1
        lowest = min(lowest, _cosine(Counter(before), Counter(after)))
    return lowest, compared
