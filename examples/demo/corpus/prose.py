"""English prose documents, most of them with a flaw planted in them (``flaws.py``).

Sources (both PSF-2.0):

- ``pydoc_data.topics``: the Python language reference topics that ship inside every
  CPython (79 topics, ~0.5 MB); always available.
- The Python 3.11 documentation sources (``python3.11-doc``, 497 ``.rst.txt`` files,
  ~11 MB), fetched with ``apt-get download`` + ``dpkg -x`` into a cache directory on first
  use. Skipped cleanly when apt is not there or the download fails.

reStructuredText markup is lightly cleaned (directives, roles, link syntax, section
underlines) so that the text reads like prose with code examples.

Flawed documents (domain ``prose``, ``variant`` naming the kind) carry the flaws of
``flaws.py`` (misspellings, swapped or dropped words, shuffled sentences, two pages
spliced). The older, obvious junk kinds below (``degrade``) can still be asked for:

- ``repeated_lines``: a sentence or two pasted many times over (spam);
- ``keyword_list``: the text's content words as comma-separated tag lists (SEO stuffing);
- ``truncated_lines``: each paragraph cut to a snippet ending in "..." (search listings).
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from .flaws import FLAW_KINDS, plant
from megatron_ixt.feedback.documents import DOMAIN_PROSE
from megatron_ixt.feedback.text_critic import STOP_WORDS

logger = logging.getLogger(__name__)

DEGRADE_KINDS = ("repeated_lines", "keyword_list", "truncated_lines")
_ROLE = re.compile(r":[\w:.+-]+:`([^`]*)`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`_{1,2}")
_REF = re.compile(r"`([^`]+)`_{1,2}")
_FOOTNOTE = re.compile(r"\s*\[#[\w-]*\]_")
_UNDERLINE = re.compile(r"^([=\-~*^#\"+`:.'_])\1{2,}\s*$")
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::\s*(.*)$")
_KEEP_DIRECTIVES = {"note": "Note:", "warning": "Warning:", "seealso": "See also:",
                    "versionadded": "New in version", "versionchanged": "Changed in version",
                    "deprecated": "Deprecated since version", "impl-detail": "CPython implementation detail:"}
_SIGNATURES = {"function", "class", "method", "attribute", "data", "exception", "decorator",
               "classmethod", "staticmethod", "opcode", "cmdoption", "envvar", "describe"}


def _role_text(match: re.Match) -> str:
    text = match.group(1)
    if "<" in text and text.endswith(">"):
        text = text[:text.index("<")].strip()  # :ref:`label text <target>` -> label text
    if text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]  # :func:`~os.path.join` -> join
    return f"`{text.lstrip('!')}`"


def clean_rst(source: str) -> str:
    """reStructuredText -> plain prose (with code blocks kept as they are)."""
    out: list[str] = []
    skipping_options = False
    for line in source.splitlines():
        directive = _DIRECTIVE.match(line)
        if directive:
            indent, name, argument = directive.groups()
            skipping_options = True
            if name in _KEEP_DIRECTIVES:
                out.append(f"{indent}{_KEEP_DIRECTIVES[name]} {argument}".rstrip())
            elif name in _SIGNATURES and argument:
                out.append(f"{indent}{argument}")
            continue
        if line.lstrip().startswith(".. "):  # comments, link targets, substitutions
            skipping_options = True
            continue
        if skipping_options and re.match(r"^\s+:[\w-]+:", line):
            continue  # directive options such as "   :synopsis: ..."
        skipping_options = False
        if _UNDERLINE.match(line):
            continue
        line = _FOOTNOTE.sub("", line)
        line = _ROLE.sub(_role_text, line)
        line = _LINK.sub(r"\1", line)
        line = _REF.sub(r"\1", line)
        out.append(line.replace("``", "`"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def chunk_paragraphs(text: str, max_chars: int, min_words: int = 40) -> list[str]:
    """Paragraph-aligned pieces of about ``max_chars``; pieces under ``min_words`` dropped."""
    pieces, current = [], ""
    for paragraph in re.split(r"\n\s*\n", text):
        if current and len(current) + len(paragraph) + 2 > max_chars:
            pieces.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        pieces.append(current)
    return [piece.strip() + "\n" for piece in pieces if len(piece.split()) >= min_words]


def python_docs_dir(cache_dir: Path, package: str = "python3.11-doc", fetch: bool = True) -> Path | None:
    """The ``_sources`` folder of the Python docs in the cache, fetched with apt if needed."""
    extracted = cache_dir / package
    sources = next(iter(sorted(extracted.glob("usr/share/doc/python3*/html/_sources"))), None)
    if sources is not None:
        return sources
    if not fetch:
        return None
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        logger.warning("apt-get/dpkg not available: no Python documentation prose")
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as work:
        try:
            subprocess.run(["apt-get", "download", package], cwd=work, check=True, timeout=180,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deb = next(Path(work).glob(f"{package}_*.deb"))
            subprocess.run(["dpkg", "-x", str(deb), str(Path(work) / "root")], check=True, timeout=180,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except (subprocess.SubprocessError, OSError, StopIteration) as error:
            detail = getattr(error, "stderr", b"") or b""
            logger.warning("could not fetch %s with apt (%s %s): no Python documentation prose",
                           package, type(error).__name__, detail.decode(errors="replace").strip()[:200])
            return None
        # Rename into place only when complete, so an interrupted fetch is not mistaken
        # for a cached one.
        (Path(work) / "root").rename(extracted)
    return next(iter(sorted(extracted.glob("usr/share/doc/python3*/html/_sources"))), None)


def _texts(docs_dir: Path | None, rng: random.Random) -> Iterator[tuple[str, str]]:
    """(id stem, cleaned text): pydoc topics first, then the doc files in a seeded order."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"prose/pydoc/{name}", topics[name]
    if docs_dir is None:
        return
    files = sorted(path for path in docs_dir.rglob("*.rst.txt")
                   if path.name != "changelog.rst.txt")  # 4 MB of bullet lists would dominate
    rng.shuffle(files)
    for path in files:
        text = clean_rst(path.read_text(encoding="utf-8", errors="replace"))
        yield f"prose/pydocs/{path.relative_to(docs_dir).as_posix().removesuffix('.rst.txt')}", text


def degrade(text: str, kind: str, rng: random.Random) -> str:
    """A junk version of ``text`` (see the module doc for the kinds)."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if kind == "repeated_lines":
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(paragraphs)) if len(s.split()) > 4]
        spam = rng.sample(sentences, min(2, len(sentences))) or [paragraphs[0]]
        out = list(paragraphs)
        # As many copies as there are paragraphs or more: spam dominates the page.
        for _ in range(rng.randint(len(paragraphs), 2 * len(paragraphs)) + 5):
            out.insert(rng.randrange(len(out) + 1), rng.choice(spam))
        return "\n\n".join(out) + "\n"
    if kind == "keyword_list":
        words, seen = [], set()
        for word in re.findall(r"[A-Za-z][A-Za-z-]{2,}", text):
            if word.lower() not in STOP_WORDS and word.lower() not in seen:
                seen.add(word.lower())
                words.append(word)
        return "\n".join(", ".join(words[i:i + 8]) for i in range(0, len(words), 8)) + "\n"
    if kind == "truncated_lines":
        lines = []
        for paragraph in paragraphs:
            words = paragraph.split()
            lines.append(" ".join(words[:rng.randint(4, 12)]) + " ...")
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown degradation {kind!r}")


def prose_documents(rng: random.Random, limit: int, cache_dir: Path, python_docs: bool = True,
                    max_chars: int = 4000, flawed_share: float = 0.7,
                    flaws: tuple[str, ...] = FLAW_KINDS,
                    flaw_rate: Optional[float] = None) -> Iterator[dict[str, Any]]:
    """Up to ``limit`` prose documents. Each piece of a page appears once: as it is, or
    (``flawed_share`` of them) with one flaw of a kind drawn from ``flaws`` (see flaws.py;
    the old junk kinds of :func:`degrade` may be named too). A flawed piece has no clean
    twin in the corpus, as on the web. ``flaw_rate``: the share of words a word-level flaw
    touches (misspelt, swapped or dropped; default flaws.py's 10 %)."""
    docs_dir = python_docs_dir(cache_dir) if python_docs else None
    pieces = []
    for stem, text in _texts(docs_dir, rng):
        for index, piece in enumerate(chunk_paragraphs(text, max_chars)):
            pieces.append((stem, index, piece))
        if len(pieces) >= limit:
            break
    pieces = pieces[:limit]
    for stem, index, piece in pieces:
        source = "python-docs" if "/pydocs/" in stem else "pydoc-topics"
        doc = {"id": f"{stem}#{index}", "domain": DOMAIN_PROSE, "text": piece, "source": source,
               "variant": "reference"}
        if flaws and rng.random() < flawed_share:
            kind = rng.choice(flaws)
            if kind in DEGRADE_KINDS:
                text = degrade(piece, kind, rng)
            elif kind == "spliced":
                others = [p for p in pieces if p[0] != stem]
                if not others:
                    kind = None
                else:
                    other_stem, other_index, other = rng.choice(others)
                    text = plant(piece, kind, rng, other, flaw_rate)
                    doc["spliced_with"] = f"{other_stem}#{other_index}"
            else:
                text = plant(piece, kind, rng, rate=flaw_rate)
            if kind is not None and text != piece:
                doc.update(id=f"{stem}#{index}/{kind}", text=text, variant=kind)
        yield doc
