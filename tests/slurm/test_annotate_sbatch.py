"""examples/slurm/annotate_feedback.sbatch on a real SLURM (the one-node local cluster).

No GPU and no model here: IXT_JUDGE_SERVER_CMD replaces `vllm serve` with fake_judge.py,
an OpenAI-compatible server that takes a few seconds to come up. The template must wait
for it, run the annotator against it and stop it when the job ends.
"""

from __future__ import annotations

import json
import os

import pytest

from .cluster import SLURM_DIR, cancel, job_env, log_tail, sbatch, start_local_cluster, wait_until_final

ANNOTATE = SLURM_DIR / "annotate_feedback.sbatch"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_slurm():
    start_local_cluster()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_annotate_job_starts_judge_annotates_and_stops_it(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": i, "domain": "prose", "text": f"Paragraph {i} about sorting."}) + "\n"
                            for i in range(6)))
    pid_file = tmp_path / "judge.pid"
    env = job_env(
        IXT_JUDGE_MODEL="fake-judge",
        IXT_JUDGE_SERVER_CMD=('"$IXT_PYTHON" tests/slurm/fake_judge.py --port "$IXT_JUDGE_PORT" '
                              f'--name "$IXT_JUDGE_NAME" --startup-delay 3 --pid-file {pid_file}'),
        IXT_JUDGE_LOG=str(tmp_path / "judge.log"),
        IXT_ANNOTATE_INPUT=str(docs), IXT_ANNOTATE_OUTPUT=str(tmp_path / "annotated.jsonl"),
        IXT_ANNOTATE_ARGS="--concurrency 2")
    # --time above the template's 5-minute warning lead (--signal=B:USR1@300), or the
    # warning would come at once
    job_id = sbatch(ANNOTATE, env=env, sbatch_args=("--gpus-per-node=0", "--cpus-per-task=1", "--time=10",
                                                    f"--output={tmp_path}/job-%j.out"))
    log = tmp_path / f"job-{job_id}.out"
    try:
        info = wait_until_final(job_id, 120, log)
    finally:
        cancel(job_id)
    text = log_tail(log)
    judge_log = log_tail(tmp_path / "judge.log")
    assert info["JobState"] == "COMPLETED", f"job {job_id}: {info}\n{text}\n--- judge\n{judge_log}"
    assert "the judge answers after" in text and "annotation finished" in text, text
    rows = [json.loads(line) for line in (tmp_path / "annotated.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(6))
    assert all(r["feedback"]["score"] == 7 for r in rows), rows[0]
    # the EXIT trap stopped the server
    assert "stopping the judge server" in text, text
    assert not alive(int(pid_file.read_text())), "the judge server outlived its job"
