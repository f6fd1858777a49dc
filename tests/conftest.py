"""Shared test helpers: GPU marker handling and multi-process launches.

Multi-process tests run the real entry points under ``torchrun --standalone`` (gloo on
CPU), as users do, and read the per-iteration metrics each run writes with --log-file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "examples" / "configs" / "tiny.yaml"
# The demo's code (corpus builder, report, pipeline) lives in examples/demo, outside the
# package; its tests import it as the demo's scripts do, from that folder.
sys.path.insert(0, str(REPO / "examples" / "demo"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def run_torchrun(nproc: int, script: str, args: list, *, timeout: int = 300, check: bool = True,
                 env: dict | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N script args``; fails the test with the
    output when the run fails and ``check`` is set.

    Every process of the run is tracked while it runs and killed when torchrun returns: a
    test that kills a rank on purpose must not leave its peers (or their helper processes,
    which torchrun starts in sessions of their own) behind."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(REPO / script), *map(str, args)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(cmd, cwd=REPO, env={**_env(), **(env or {})}, stdout=out, stderr=err,
                                 text=True, start_new_session=True)
        tree = ProcessTree(child)
        returncode = tree.wait(timeout)
        tree.kill()
        out.seek(0)
        err.seek(0)
        proc = subprocess.CompletedProcess(cmd, child.returncode, out.read(), err.read())
    if returncode is None:
        pytest.fail(f"{' '.join(cmd)} timed out after {timeout}s\n--- stdout\n{proc.stdout[-6000:]}\n"
                    f"--- stderr\n{proc.stderr[-6000:]}")
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n"
                    f"--- stderr\n{proc.stderr[-6000:]}")
    return proc


class ProcessTree:
    """A launched process and every descendant seen while it ran (descendants outlive their
    parent as orphans, so they are recorded while the parent is alive)."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen
        self.seen: dict[int, psutil.Process] = {}

    def snapshot(self) -> None:
        try:
            for p in psutil.Process(self.popen.pid).children(recursive=True):
                self.seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass

    def wait(self, timeout: float) -> int | None:
        """The launcher's exit status, or None on timeout."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.snapshot()
            if self.popen.poll() is not None:
                return self.popen.returncode
            time.sleep(0.2)
        return None

    def kill(self) -> None:
        self.snapshot()
        for p in [psutil.Process(self.popen.pid) if self.popen.poll() is None else None, *self.seen.values()]:
            try:
                if p is not None and p.is_running():
                    p.kill()
            except psutil.NoSuchProcess:
                pass
        self.popen.wait()


def run_python(script: str, args: list, *, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO,
                          env={**_env(), **(env or {})}, capture_output=True, text=True, timeout=timeout)


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """(training records, validation records) from a --log-file."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in rows if "split" not in r], [r for r in rows if "split" in r]


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
