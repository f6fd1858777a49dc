"""examples/slurm/preprocess_data.sbatch on a real SLURM (the one-node local cluster).

submit_preprocess.sh runs one array task per input file and a merge job that depends on
the array; the merged dataset must equal, byte for byte, what one tools/preprocess_data.py
run over all the files writes. The corpus is real text (docstrings of the standard
library, read with `ast`, nothing imported), a third of it with feedback so that prefixes
and the side file are exercised, tokenized with a SentencePiece model trained here.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .cluster import REPO, SLURM_DIR, cancel, job_env, log_tail, run, start_local_cluster, wait_until_final

SUBMIT = SLURM_DIR / "submit_preprocess.sh"
SHARD_SIZES = (100, 60, 80)  # documents per input file: one array task each

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_slurm():
    start_local_cluster()


def stdlib_docstrings(count: int) -> list[str]:
    """The first ``count`` docstrings of 200+ characters in the standard library, in file order."""
    docs = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 200:
                    docs.append(doc)
                    if len(docs) == count:
                        return docs
    pytest.fail(f"found only {len(docs)} long docstrings in the standard library")


def write_inputs(folder: Path) -> list[Path]:
    docs = stdlib_docstrings(sum(SHARD_SIZES))
    paths, start = [], 0
    for i, size in enumerate(SHARD_SIZES):
        path = folder / f"part{i}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for n, text in enumerate(docs[start:start + size], start):
                record = {"id": n, "text": text}
                if n % 3 == 0:
                    record["feedback"] = {"score": n % 11, "scale": [0, 10], "critique": f"Docstring {n}."}
                f.write(json.dumps(record) + "\n")
        paths.append(path)
        start += size
    return paths


def test_array_preprocess_then_merge_equals_single_run(tmp_path):
    inputs = write_inputs(tmp_path)
    run([sys.executable, "tools/train_tokenizer.py", "--input", ",".join(map(str, inputs)),
         "--model-prefix", str(tmp_path / "tok"), "--vocab-size", "600", "--num-threads", "1"], timeout=120)
    tool_args = f"--tokenizer-type SentencePieceTokenizer --tokenizer-model {tmp_path}/tok.model --append-eod"

    env = job_env(IXT_PREPROCESS_ARGS=tool_args, IXT_LOG_DIR=str(tmp_path / "logs"),
                  IXT_SBATCH_ARGS="--cpus-per-task=1")  # two array tasks at once on two cores
    out = run(["bash", str(SUBMIT), str(tmp_path / "merged" / "corpus"), *map(str, inputs)], env=env)
    array_id, merge_id = map(int, out.split()[-2:])
    try:
        # Meanwhile, the reference: one process over all the files, in the same order.
        reference = subprocess.Popen(
            [sys.executable, "tools/preprocess_data.py", "--input", ",".join(map(str, inputs)),
             "--output-prefix", str(tmp_path / "single" / "corpus"), "--workers", "1", *tool_args.split()],
            cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        merge_log = tmp_path / "logs" / f"ixt-merge-{merge_id}.out"
        info = wait_until_final(merge_id, 240, merge_log)
        ref_out, _ = reference.communicate(timeout=120)
    finally:
        cancel(array_id)
        cancel(merge_id)
    assert reference.returncode == 0, ref_out

    task_logs = sorted((tmp_path / "logs").glob(f"ixt-preprocess-{array_id}_*.out"))
    assert info["JobState"] == "COMPLETED", (
        f"merge job {merge_id}: {info}\n{log_tail(merge_log)}\n"
        + "\n".join(f"--- {p.name}\n{log_tail(p, 2000)}" for p in task_logs))
    assert len(task_logs) == len(SHARD_SIZES), [p.name for p in task_logs]

    merged = tmp_path / "merged" / "corpus_text_document"
    single = tmp_path / "single" / "corpus_text_document"
    for suffix in (".bin", ".idx", ".ixt.npy"):
        assert Path(f"{merged}{suffix}").read_bytes() == Path(f"{single}{suffix}").read_bytes(), \
            f"merged {suffix} differs from the single run's"
    merged_meta = json.loads(Path(f"{merged}.meta.json").read_text())
    single_meta = json.loads(Path(f"{single}.meta.json").read_text())
    assert merged_meta["counts"] == single_meta["counts"]
    assert merged_meta["counts"]["documents"] == sum(SHARD_SIZES)
    assert merged_meta["counts"]["prefixed_documents"] > 0  # the feedback path was exercised
    assert len(merged_meta["merged_from"]) == len(SHARD_SIZES)
    assert not list((tmp_path / "merged" / "corpus.shards").glob("shard_*")), "shards are removed after the merge"
