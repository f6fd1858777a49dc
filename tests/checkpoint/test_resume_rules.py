"""What a checkpoint checks and keeps on resume: an atomic re-save of an existing iteration,
changed schedule flags (Megatron-LM's rule), transformer_impl among the model fields, and
the prefix template of the training data recorded for the inference tools."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.launch import REPO, TINY, child_env, read_metrics, run_torchrun
from megatron_ixt.config import Config, ConfigError
from megatron_ixt.checkpoint import files
from megatron_ixt.checkpoint.load import check_model_compatible



def tracker(ckpt) -> int:
    return int((ckpt / "latest_checkpointed_iteration.txt").read_text())


# -- the re-save, step by step (no processes needed) --------------------------------------

def _folder(path, content: str):
    path.mkdir()
    (path / "common.pt").write_text(content)
    return path


@pytest.mark.parametrize("point", ["kill-after-aside", "kill-before-old-removed"])
def test_resave_interrupted_between_steps_keeps_a_complete_checkpoint(tmp_path, point):
    final = _folder(tmp_path / "iter_0000004", "old")
    new = _folder(tmp_path / "iter_0000004.partial", "new")

    class Killed(Exception):
        pass

    def fault(at):
        if at == point:
            raise Killed(at)

    with pytest.raises(Killed):
        files.replace_folder(str(new), str(final), fault)
    # Whatever the step, the iteration is readable now (the folder or its .old twin) ...
    readable = files.checkpoint_path(str(tmp_path), 4)
    assert os.path.isfile(os.path.join(readable, "common.pt"))
    # ... and the next start leaves exactly one complete folder in place.
    files.recover_interrupted_saves(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["iter_0000004"]
    assert (final / "common.pt").read_text() == ("old" if point == "kill-after-aside" else "new")


def test_resave_without_fault_replaces_the_folder(tmp_path):
    final = _folder(tmp_path / "iter_0000004", "old")
    files.replace_folder(str(_folder(tmp_path / "iter_0000004.partial", "new")), str(final))
    assert sorted(os.listdir(tmp_path)) == ["iter_0000004"] and (final / "common.pt").read_text() == "new"


# -- transformer_impl ------------------------------------------------------------------------

def test_transformer_impl_mismatch_is_named():
    cfg = Config()
    cfg.model.transformer_impl = "transformer_engine"
    saved = Config().to_dict()
    saved["model"]["transformer_impl"] = "local"
    with pytest.raises(ConfigError, match="--transformer-impl: checkpoint 'local', configured 'transformer_engine'"):
        check_model_compatible(saved, cfg, "checkpoint X")
    cfg.model.transformer_impl = "local"
    check_model_compatible(saved, cfg, "checkpoint X")


# -- real runs ------------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_during_resave_leaves_a_loadable_checkpoint(tmp_path, mock_checkpoint):
    # A finished run resumed with the same --train-iters re-saves the iteration it loaded.
    ckpt = mock_checkpoint.copy(tmp_path / "ckpt")
    args = [*mock_checkpoint.flags, "--load", ckpt, "--save", ckpt]
    proc = run_torchrun(2, "pretrain_ixt.py", args, check=False, env={"MEGATRON_IXT_FAULT": "kill-after-aside@6"})
    assert proc.returncode != 0 and tracker(ckpt) == 6
    # Killed mid-way: the old folder aside, the new one not yet in place.
    assert sorted(p for p in os.listdir(ckpt) if p.startswith("iter_")) == [
        "iter_0000003", "iter_0000006.old", "iter_0000006.partial"]
    proc = run_torchrun(2, "pretrain_ixt.py", args)
    assert "restored checkpoint" in proc.stdout and "loaded checkpoint" in proc.stdout, proc.stdout[-3000:]
    assert sorted(p for p in os.listdir(ckpt) if p.startswith("iter_")) == ["iter_0000003", "iter_0000006"]


@pytest.mark.slow
def test_changed_schedule_flags_are_refused_unless_chosen(tmp_path, mock_checkpoint):
    # The checkpoint's schedule: warm-up 5, cosine from 3e-3 to 3e-4 ending at iteration 6.
    changed = [*mock_checkpoint.flags, "--train-iters", 12, "--load", mock_checkpoint.path, "--lr", 0.01,
               "--min-lr", 0.001]
    proc = run_torchrun(2, "pretrain_ixt.py", changed, check=False)
    message = proc.stderr.split("pretrain_ixt.py: error: ", 1)[-1].splitlines()[0]
    assert proc.returncode != 0 and "another learning-rate schedule" in message, proc.stderr[-3000:]
    for named in ("--lr: checkpoint 0.003, configured 0.01", "--min-lr: checkpoint 0.0003, configured 0.001",
                  "--lr-decay-iters (default --train-iters): checkpoint 6 iterations (48 samples), "
                  "configured 12 iterations (96 samples)", "--override-opt-param-scheduler"):
        assert named in message, message

    lrs = {}
    for choice in ("--override-opt-param-scheduler", "--use-checkpoint-opt-param-scheduler"):
        log = tmp_path / f"{choice}.jsonl"
        run_torchrun(2, "pretrain_ixt.py", [*changed, choice, "--log-file", log])
        rows, _ = read_metrics(log)
        assert rows[0]["iteration"] == 7
        lrs[choice] = rows[0]["lr"]
    # This run's schedule: cosine from 0.01 to 0.001 over 12 iterations (warm-up 5) -> at step 7
    # of 12 it is still near the peak; the checkpoint's ended at iteration 6: its min-lr.
    assert lrs["--use-checkpoint-opt-param-scheduler"] == pytest.approx(3e-4)
    assert lrs["--override-opt-param-scheduler"] > 3e-3


@pytest.mark.slow
def test_checkpoint_records_the_prefix_template(tmp_path, ixt_corpus, ixt_checkpoint):
    ckpt = ixt_checkpoint.path
    # The corpus was preprocessed with --prefix-template critique: the tools take it from the checkpoint.
    # The level-5 critique prefix (80 tokens with the prompt) does not fit this 64-token model:
    # generate.py says so before generating (megatron-core's static generation controller also refuses it).
    proc = run_torchrun(1, "tools/generate.py", ["--load", ckpt, "--feedback-level", 5, "--prompt", "def ",
                                                 "--max-new-tokens", 4, "--greedy"], check=False)
    assert "prefix template critique (recorded in the checkpoint)" in proc.stdout, proc.stdout[-2000:]
    assert proc.returncode != 0 and "the prompt takes 80 tokens" in proc.stderr, proc.stderr[-2000:]
    assert "leaves 0 of the 4 new tokens asked for in the checkpoint's --seq-length 64" in proc.stderr
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(open(ixt_corpus["jsonl"]).readlines()[:4]))
    proc = run_torchrun(1, "tools/evaluate_conditioning.py", ["--load", ckpt, "--input", docs, "--seq-length", 48])
    assert "template critique, quality thresholds fixed" in proc.stdout, proc.stdout[-2000:]
    # Asked for another template than the model was trained with: it is used, with a warning.
    proc = run_torchrun(1, "tools/generate.py", ["--load", ckpt, "--prefix-template", "quality", "--prompt", "def ",
                                                 "--max-new-tokens", 2, "--greedy"])
    assert "Quality: 5/5" in proc.stdout and "differs from the template the model was trained with" in proc.stdout
    # A --seq-length beyond the model's is refused by name.
    proc = run_torchrun(1, "tools/evaluate_conditioning.py", ["--load", ckpt, "--input", docs, "--seq-length", 4096],
                        check=False)
    assert proc.returncode != 0 and "--seq-length 4096: expected 3 .. 64" in proc.stderr


# -- --load of another folder ----------------------------------------------------------------

# A live run's lock on its --save folder (what pretrain_ixt.py takes), held until killed.
LOCK_HOLDER = """
import sys, time
from megatron_ixt.runtime import lifecycle
lifecycle.lock_save_folder(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_load_repairs_interrupted_saves_only_in_its_own_locked_save_folder(tmp_path, mock_checkpoint):
    # --load may name another run's folder, live and saving: its .partial folder is that
    # run's save in flight, not debris. Only this run's --save folder, once locked, is repaired.
    theirs = mock_checkpoint.copy(tmp_path / "theirs")
    args = [*mock_checkpoint.flags, "--lr-decay-iters", 6]  # the checkpoint's schedule, for runs of 7 iterations
    in_flight = _folder(theirs / "iter_0000009.partial", "being written")
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(theirs)], cwd=REPO, env=child_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # Fine-tuning from their latest checkpoint into a folder of our own: theirs is only read.
        ours = tmp_path / "ours"
        proc = run_torchrun(2, "pretrain_ixt.py", [*args, "--train-iters", 7, "--load", theirs, "--save", ours])
        assert "loaded checkpoint" in proc.stdout and tracker(ours) == 7, proc.stdout[-3000:]
        assert (in_flight / "common.pt").is_file(), proc.stdout[-3000:]
        # Resuming in their folder while they hold it: refused before anything there is touched.
        proc = run_torchrun(2, "pretrain_ixt.py", [*args, "--train-iters", 7, "--load", theirs, "--save", theirs],
                            check=False)
        assert proc.returncode != 0 and "is in use by a running training" in proc.stderr, proc.stderr[-3000:]
        assert (in_flight / "common.pt").is_file() and tracker(theirs) == 6
    finally:
        holder.kill()
        holder.wait()
    # Their run is gone: resuming in their folder takes the lock, then removes the leftover.
    proc = run_torchrun(2, "pretrain_ixt.py", [*args, "--train-iters", 7, "--load", theirs, "--save", theirs])
    assert "removed incomplete checkpoint" in proc.stdout and not in_flight.exists(), proc.stdout[-3000:]
    assert tracker(theirs) == 7
