"""Bad input: every case names file, line and field, exits non-zero and leaves no
.bin/.idx behind; with --skip-invalid, bad lines are skipped, counted and listed.

The tool runs as a process (forked from the test process for speed: see conftest.py), and
twice from a fresh interpreter, for the exit status of the real command line.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_ixt.format.indexed_io import read_metadata

from tests.text_fixtures import PREPROCESS_TOOL, _run_forked, run_subprocess

GOOD = [json.dumps({"text": f"def f{i}(x):\n    return x + {i}\n", "feedback": {"score": i}}).encode() for i in range(6)]

# name -> (bad line, its field or None, words the message must contain)
BAD_LINES = {
    "malformed JSON": (b'{"text": "def f():', None, "malformed JSON"),
    "blank line": (b"", None, "blank line"),
    "missing key": (b'{"body": "x = 1"}', "text", "key 'text' is missing"),
    "non-string text": (b'{"text": 42}', "text", "a string or a list of strings"),
    "score off its scale": (b'{"text": "x = 1", "feedback": {"score": 12}}', "feedback.score", "within the scale [0, 10]"),
    "score of the wrong type": (b'{"text": "x = 1", "feedback": {"score": "high"}}', "feedback.score", "a number"),
    "axis of the wrong type": (b'{"text": "x", "feedback": {"score": 1, "axes": {"expertise": [1]}}}', "feedback.axes.expertise", "a number"),
    "bad scale": (b'{"text": "x", "feedback": {"score": 1, "scale": [10, 0]}}', "feedback.scale", "min < max"),
    "non-UTF-8 bytes": (b'{"text": "caf\xe9 = 1"}', None, "UTF-8"),
}
BAD_LINE_NUMBER = 4


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def base_args(tmp_path, source, sp_model, *extra):
    return ["--input", source, "--output-prefix", tmp_path / "out" / "corpus", "--tokenizer-type",
            "SentencePieceTokenizer", "--tokenizer-model", sp_model, "--append-eod", *extra]


def assert_nothing_written(tmp_path):
    out = tmp_path / "out"
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left == [], f"left behind: {left}"


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("case", list(BAD_LINES))
def test_bad_line(tmp_path, sp_model, run_preprocess_tool, case, workers):
    bad, field, words = BAD_LINES[case]
    lines = GOOD[: BAD_LINE_NUMBER - 1] + [bad] + GOOD[BAD_LINE_NUMBER - 1:]
    source = write_lines(tmp_path / "docs.jsonl", lines)
    # Small batches: with 2 workers the bad line is in the second batch, on a worker.
    args = base_args(tmp_path, source, sp_model, "--workers", workers, "--batch-size", 2)

    run = run_preprocess_tool(*args)
    assert run.returncode == 1, run.output
    assert f"{source}:{BAD_LINE_NUMBER}: " in run.output
    assert words in run.output
    if field:
        assert f"field '{field}'" in run.output
    assert "Traceback" not in run.output
    assert_nothing_written(tmp_path)

    run = run_preprocess_tool(*args, "--skip-invalid")
    assert run.returncode == 0, run.output
    prefix = str(tmp_path / "out" / "corpus_text_document")
    assert len(IndexedDataset(prefix)) == len(GOOD)
    meta = read_metadata(prefix)
    assert meta["counts"]["skipped_lines"] == 1 and meta["counts"]["documents"] == len(GOOD)
    (skipped,) = meta["skipped"]
    assert (skipped["file"], skipped["line"], skipped["field"]) == (str(source), BAD_LINE_NUMBER, field)
    assert words in skipped["error"]
    assert f"skipped {source}:{BAD_LINE_NUMBER}:" in run.output


def test_many_bad_lines_are_counted_and_the_first_listed(tmp_path, sp_model, run_preprocess_tool):
    lines = []
    for i in range(300):
        lines.append(GOOD[i % 6] if i % 4 else b'{"text": 1}')
    source = write_lines(tmp_path / "docs.jsonl", lines)
    run = run_preprocess_tool(*base_args(tmp_path, source, sp_model, "--workers", 2, "--batch-size", 16, "--skip-invalid"))
    assert run.returncode == 0, run.output
    meta = read_metadata(str(tmp_path / "out" / "corpus_text_document"))
    assert meta["counts"]["skipped_lines"] == 75 and meta["counts"]["documents"] == 225
    assert [s["line"] for s in meta["skipped"]] == [1 + 4 * k for k in range(10)]
    assert "... and 65 more skipped lines" in run.output


def test_text_the_tokenizer_cannot_encode(tmp_path, run_preprocess_tool):
    source = write_lines(tmp_path / "ids.jsonl", [b'{"text": "1 2 3"}', b'{"text": "4 five 6"}', b'{"text": "7 99999"}'])
    args = ["--input", source, "--output-prefix", tmp_path / "out" / "n", "--tokenizer-type", "NullTokenizer",
            "--vocab-size", "100", "--prefix-template", "none"]
    run = run_preprocess_tool(*args)
    assert run.returncode == 1 and f"{source}:2: field 'text'" in run.output
    assert_nothing_written(tmp_path)
    run = run_preprocess_tool(*args, "--skip-invalid")
    assert run.returncode == 0, run.output
    meta = read_metadata(str(tmp_path / "out" / "n_text_document"))
    assert [(s["line"], s["field"]) for s in meta["skipped"]] == [(2, "text"), (3, "text")]
    assert "token ids within [0, 103)" in meta["skipped"][1]["error"]


def corrupt_gzip(tmp_path):
    data = gzip.compress(b"".join(line + b"\n" for line in GOOD * 50))
    path = tmp_path / "docs.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


# name -> (setup(tmp_path, sp_model) -> (input, tokenizer model, output prefix), words)
FILE_ERRORS = {
    "empty input": (lambda t, m: (write_lines(t / "empty.jsonl", []), m, None), "the input is empty"),
    "missing input": (lambda t, m: (t / "nope.jsonl", m, None), "no such input file"),
    "glob without match": (lambda t, m: (t / "*.nothing", m, None), "no input file matches"),
    "truncated gzip": (lambda t, m: (corrupt_gzip(t), m, None), "cannot read input"),
    "unreadable tokenizer": (lambda t, m: (write_lines(t / "d.jsonl", GOOD), _junk(t), None), "cannot load SentencePiece model"),
    "missing tokenizer": (lambda t, m: (write_lines(t / "d.jsonl", GOOD), t / "no.model", None), "does not exist"),
    "unwritable output folder": (lambda t, m: (write_lines(t / "d.jsonl", GOOD), m, _file_in_the_way(t) / "sub" / "x"),
                                 "cannot write to the output folder"),
}


def _junk(tmp_path):
    path = tmp_path / "junk.model"
    path.write_bytes(b"\x08\x01garbage")
    return path


def _file_in_the_way(tmp_path):
    # Tests may run as root, for whom permission bits do not stop writes: put a file where
    # the output folder must be created instead.
    blocker = tmp_path / "out"
    blocker.write_text("a file, not a folder")
    return blocker


@pytest.mark.parametrize("skip_invalid", [False, True])
@pytest.mark.parametrize("case", list(FILE_ERRORS))
def test_file_level_errors(tmp_path, sp_model, run_preprocess_tool, case, skip_invalid):
    setup, words = FILE_ERRORS[case]
    source, model, output = setup(tmp_path, sp_model)
    args = base_args(tmp_path, source, model, *(["--skip-invalid"] if skip_invalid else []))
    if output is not None:
        args[args.index("--output-prefix") + 1] = output
    run = run_preprocess_tool(*args)
    assert run.returncode == 1, run.output
    assert words in run.output and "Traceback" not in run.output
    out = tmp_path / "out"
    if out.is_dir():
        assert_nothing_written(tmp_path)


# Root writes through permission bits, and CI runs as root: there the tool runs as the
# unprivileged user "nobody", in a launched child that drops root's privileges. The checkout
# may sit under a folder that only root may enter (/root, a fresh `mktemp -d`), so the child
# reads the tool and imports what it uses while still root, then becomes nobody and runs it.
UNPRIVILEGED = 65534  # nobody / nogroup
AS_NOBODY = """
import os, sys
tool = {tool!r}
with open(tool, encoding="utf-8") as f:
    code = compile(f.read(), tool, "exec")
import megatron_ixt.preprocess.config, megatron_ixt.preprocess.pipeline, megatron_ixt.tokenizers.build
import sentencepiece, sentencepiece.sentencepiece_model_pb2, numpy, json, gzip, zlib
from megatron_ixt.format.prefixes import DEFAULT_PREFIX_TEMPLATE, load_template
load_template(DEFAULT_PREFIX_TEMPLATE)  # the package's data files are read (and cached) here
os.setgroups([])
os.setgid({uid})
os.setuid({uid})
os.chdir("/")
sys.argv[0] = tool
exec(code, {{"__name__": "__main__", "__file__": tool}})
"""


def test_read_only_output_folder(tmp_path, sp_model, run_preprocess_tool):
    import shutil
    import tempfile

    as_root = os.geteuid() == 0
    work = Path(tempfile.mkdtemp(prefix="read_only_test_")) if as_root else tmp_path
    try:
        source = write_lines(work / "docs.jsonl", GOOD)
        model = work / "sp.model"
        shutil.copyfile(sp_model, model)
        out = work / "out"
        out.mkdir()
        args = base_args(work, source, model)
        if as_root:
            work.chmod(0o755)
            for path in (source, model):
                path.chmod(0o644)
            os.chown(out, UNPRIVILEGED, UNPRIVILEGED)  # its owner, who may not write there
            wrapper = work / "as_nobody.py"
            wrapper.write_text(AS_NOBODY.format(tool=str(PREPROCESS_TOOL), uid=UNPRIVILEGED))
            tool = lambda *a: _run_forked(wrapper, [str(x) for x in a])  # noqa: E731
        else:
            tool = run_preprocess_tool
        out.chmod(0o500)
        try:
            run = tool(*args)
        finally:
            out.chmod(0o700)
        assert run.returncode == 1 and "cannot write to the output folder" in run.output, run.output
        assert_nothing_written(work)
    finally:
        if as_root:
            shutil.rmtree(work, ignore_errors=True)


def test_all_lines_skipped_is_an_error(tmp_path, sp_model, run_preprocess_tool):
    source = write_lines(tmp_path / "docs.jsonl", [b"{", b'{"text": 1}'])
    run = run_preprocess_tool(*base_args(tmp_path, source, sp_model, "--skip-invalid"))
    assert run.returncode == 1 and "no valid documents" in run.output
    assert_nothing_written(tmp_path)


def test_model_without_delimiters_gets_them_appended(tmp_path, sp_model_without_delimiters, run_preprocess_tool):
    # Once refused ("no single piece for <|feedback|>"); now the delimiters get the two ids
    # after the model's vocabulary (tests/data/test_own_tokenizer.py checks the layout).
    source = write_lines(tmp_path / "docs.jsonl", GOOD)
    run = run_preprocess_tool(*base_args(tmp_path, source, sp_model_without_delimiters))
    assert run.returncode == 0, run.output


def test_usage_errors_exit_2(tmp_path, sp_model, run_preprocess_tool):
    source = write_lines(tmp_path / "docs.jsonl", GOOD)
    for extra, words in ((["--score-scale", "10,0"], "--score-scale"), (["--split-sentences"], "not supported"),
                         (["--prefix-template", "fancy"], "unknown prefix template")):
        run = run_preprocess_tool(*base_args(tmp_path, source, sp_model, *extra))
        assert run.returncode == (1 if extra[0] == "--prefix-template" else 2), run.output
        assert words in run.output


def test_real_command_line(tmp_path, sp_model):
    """A fresh interpreter: the exit status and messages users see."""
    lines = GOOD[:2] + [b'{"text": "x", "feedback": {"score": 12}}'] + GOOD[2:]
    source = write_lines(tmp_path / "docs.jsonl", lines)
    failed = run_subprocess(PREPROCESS_TOOL, *base_args(tmp_path, source, sp_model))
    assert failed.returncode == 1
    assert f"{source}:3: field 'feedback.score': expected a number within the scale [0, 10], got 12 (int)" in failed.stderr
    assert_nothing_written(tmp_path)
    skipped = run_subprocess(PREPROCESS_TOOL, *base_args(tmp_path, source, sp_model, "--skip-invalid", "--workers", "2"))
    assert skipped.returncode == 0, skipped.stderr
    assert "Wrote 6 documents" in skipped.stderr and "1 lines skipped" in skipped.stderr
