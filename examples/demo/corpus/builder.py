"""Builds the demo corpus: a JSONL of code, math and prose documents from offline sources,
with realistic broken variants, for the critics to judge and the IXT demo to train on.

Pipeline:

1. each source yields documents in a seeded order up to its quota (``--mix`` shares of
   ``--max-docs``; the standard library takes whatever the others leave, so the corpus
   always reaches ``--max-docs``);
2. the documents are shuffled with the seed;
3. they are written to ``<output>.tmp-<pid>`` and renamed to ``<output>`` when complete.

The same seed and sources give the same file, byte for byte. Each source has its own random
stream, so changing one share does not reshuffle the others.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from .gsm import gsm_documents
from .humaneval import humaneval_documents
from .flaws import FLAW_KINDS
from .prose import DEGRADE_KINDS, prose_documents
from .stdlib_code import stdlib_documents

logger = logging.getLogger(__name__)

DEFAULT_MIX = {"humaneval": 0.2, "math": 0.15, "prose": 0.3}


@dataclass
class CorpusConfig:
    """Settings of the demo corpus."""

    output: Path
    """Where the JSONL goes."""
    max_docs: int = 3000
    """Number of documents (fewer only if every source runs dry)."""
    seed: int = 0
    """Seed of every random choice (order, variants, mutations)."""
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    """Shares of humaneval, math and prose; the standard library gets the rest."""
    cache_dir: Path = Path(".cache/ixt-demo")
    """Where downloaded sources (the Python docs) are kept between builds."""
    python_docs: bool = True
    """Fetch the Python documentation with apt for prose (else pydoc topics only)."""
    broken_per_problem: int = 2
    """Broken variants per HumanEval problem."""
    wrong_share: float = 0.5
    """Share of math problems that also get a wrong worked answer."""
    flawed_share: float = 0.7
    """Share of prose pieces replaced by a flawed version (flaws.py): most web text is imperfect."""
    prose_flaws: tuple[str, ...] = FLAW_KINDS
    """Kinds of prose flaw to draw from (flaws.FLAW_KINDS, or prose.DEGRADE_KINDS' junk)."""
    flaw_rate: Optional[float] = None
    """Share of words a word-level flaw touches (misspelt, swapped, dropped); None: 10 %."""
    code_chunk_chars: int = 3000
    """Target size of a standard-library document."""
    prose_chunk_chars: int = 3000
    """Target size of a prose document."""

    def __post_init__(self) -> None:
        unknown = set(self.mix) - set(DEFAULT_MIX)
        if unknown:
            raise ValueError(f"--mix: unknown source(s) {sorted(unknown)}; choose from {', '.join(DEFAULT_MIX)}")
        if any(share < 0 for share in self.mix.values()) or sum(self.mix.values()) > 1:
            raise ValueError(f"--mix shares must be >= 0 and sum to at most 1, got {self.mix}")
        unknown = set(self.prose_flaws) - set(FLAW_KINDS) - set(DEGRADE_KINDS)
        if unknown:
            raise ValueError(f"--prose-flaws: unknown kind(s) {sorted(unknown)}; choose from "
                             f"{', '.join(FLAW_KINDS + DEGRADE_KINDS)}")
        if self.flaw_rate is not None and not 0 < self.flaw_rate < 1:
            raise ValueError(f"--flaw-rate must be in (0, 1), got {self.flaw_rate}")
        if not 0 <= self.flawed_share <= 1:
            raise ValueError(f"--flawed-share must be in [0, 1], got {self.flawed_share}")
        if self.max_docs <= 0:
            raise ValueError(f"--max-docs must be positive, got {self.max_docs}")


def collect(config: CorpusConfig) -> list[dict[str, Any]]:
    """All documents of the corpus, shuffled."""
    def rng(name: str) -> random.Random:
        return random.Random(f"{config.seed}/{name}")  # str seeds are hashed stably (sha512)

    quota = {name: round(share * config.max_docs) for name, share in config.mix.items()}
    docs: list[dict[str, Any]] = []
    started = time.monotonic()
    docs += humaneval_documents(rng("humaneval"), quota.get("humaneval", 0), config.broken_per_problem)
    docs += gsm_documents(rng("math"), quota.get("math", 0), wrong_share=config.wrong_share)
    docs += prose_documents(rng("prose"), quota.get("prose", 0), Path(config.cache_dir),
                            python_docs=config.python_docs, max_chars=config.prose_chunk_chars,
                            flawed_share=config.flawed_share, flaws=tuple(config.prose_flaws),
                            flaw_rate=config.flaw_rate)
    docs += stdlib_documents(rng("stdlib"), config.max_docs - len(docs), config.code_chunk_chars)
    logger.info("collected %d documents in %.1f s", len(docs), time.monotonic() - started)
    rng("order").shuffle(docs)
    return docs


def write_atomically(docs: list[dict[str, Any]], output: Path) -> int:
    """Write JSONL to a temporary name and rename it into place; return the bytes written."""
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f"{output.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            for doc in docs:
                handle.write((json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, output)
    except BaseException:
        temporary.unlink(missing_ok=True)  # no half-written corpus left behind
        raise
    return output.stat().st_size


def describe(docs: list[dict[str, Any]], size: int, elapsed: float) -> str:
    """Counts by domain, source and variant."""
    by_domain = Counter(doc["domain"] for doc in docs)
    by_source = Counter((doc["source"], doc["variant"]) for doc in docs)
    lines = [f"{len(docs)} documents, {size / 1e6:.2f} MB, in {elapsed:.1f} s",
             "by domain: " + ", ".join(f"{k} {v}" for k, v in sorted(by_domain.items())),
             "by source/variant:"]
    lines += [f"  {source:15s} {variant:17s} {count:6d}" for (source, variant), count in sorted(by_source.items())]
    return "\n".join(lines)


def build_demo_corpus(config: CorpusConfig) -> dict[str, Any]:
    """Build and write the corpus; return a summary (counts, bytes, seconds)."""
    started = time.monotonic()
    docs = collect(config)
    size = write_atomically(docs, Path(config.output))
    elapsed = time.monotonic() - started
    return {"documents": len(docs), "bytes": size, "seconds": round(elapsed, 2),
            "by_domain": dict(Counter(doc["domain"] for doc in docs)),
            "by_variant": dict(Counter(f"{doc['source']}/{doc['variant']}" for doc in docs)),
            "report": describe(docs, size, elapsed)}


def parse_mix(text: str) -> dict[str, float]:
    """``humaneval=0.2,math=0.15,prose=0.3`` -> dict."""
    mix = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        try:
            mix[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--mix expects name=share pairs, got {item!r}") from None
    return mix


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the IXT demo corpus (JSONL) from offline sources.")
    parser.add_argument("--output", required=True, type=Path, help="output JSONL")
    parser.add_argument("--max-docs", type=int, default=3000, help="number of documents")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mix", type=parse_mix, default=dict(DEFAULT_MIX),
                        help="shares of humaneval, math, prose (stdlib gets the rest), "
                             "default humaneval=0.2,math=0.15,prose=0.3")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/ixt-demo"),
                        help="where the Python docs are kept once fetched")
    parser.add_argument("--no-python-docs", action="store_true",
                        help="do not fetch the Python docs with apt (prose from pydoc topics only)")
    parser.add_argument("--broken-per-problem", type=int, default=2)
    parser.add_argument("--wrong-share", type=float, default=0.5)
    parser.add_argument("--prose-chunk-chars", type=int, default=3000, help="target size of a prose document")
    parser.add_argument("--flawed-share", type=float, default=0.7,
                        help="share of prose pieces replaced by a flawed version (default 0.7)")
    parser.add_argument("--prose-flaws", default=",".join(FLAW_KINDS),
                        help=f"comma-separated flaw kinds, from {', '.join(FLAW_KINDS + DEGRADE_KINDS)}")
    parser.add_argument("--flaw-rate", type=float, default=None,
                        help="share of words a word-level flaw touches: misspelt, swapped or dropped (default 0.1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = CorpusConfig(output=args.output, max_docs=args.max_docs, seed=args.seed, mix=args.mix,
                              cache_dir=args.cache_dir, python_docs=not args.no_python_docs,
                              broken_per_problem=args.broken_per_problem, wrong_share=args.wrong_share,
                              flawed_share=args.flawed_share, prose_chunk_chars=args.prose_chunk_chars,
                              prose_flaws=tuple(filter(None, args.prose_flaws.split(","))),
                              flaw_rate=args.flaw_rate)
    except ValueError as error:
        parser.error(str(error))
    print(build_demo_corpus(config)["report"])
    return 0
