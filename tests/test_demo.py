"""The demo driver (examples/demo/run_demo.py) end to end with its --quick budget, and its
pieces (held-out split, failure reporting, the report) on their own.

The end-to-end test runs every real stage (corpus, critics, tokenizer, preprocessing,
torchrun training at TP=2, evaluation at PP=2, generation at TP=1, report): about 1.5
minutes on two busy cores."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, _env

sys.path.insert(0, str(REPO / "examples" / "demo"))

import pipeline  # noqa: E402
import run_demo  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    # --no-python-docs: no apt-get download from a test (the stages are the same).
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "demo" / "run_demo.py"), "--quick",
                           "--no-python-docs", "--output-dir", str(out)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout[-5000:]}\n--- stderr\n{proc.stderr[-5000:]}"
    return out, proc.stdout


@pytest.mark.slow
def test_quick_demo_progress_lines_and_outputs(quick_demo):
    out, stdout = quick_demo
    for i, stage in enumerate(["corpus", "annotate", "split", "tokenizer", "preprocess", "train", "evaluate",
                               "generate", "report"], 1):
        assert f"[{i}/9] {stage:<12} done in " in stdout, stdout
    stages = json.loads((out / "stages.json").read_text())
    assert [s["stage"] for s in stages][-1] == "report" and all(s["seconds"] >= 0 for s in stages)
    assert "pydoc topics only" in stdout  # the missing Python docs are said, not skipped silently
    for name in ("corpus", "annotate", "train", "evaluate", "report"):
        assert (out / "logs" / f"{name}.log").read_text().startswith("$ ")


@pytest.mark.slow
def test_quick_demo_conditioning_json(quick_demo):
    out, _ = quick_demo
    result = json.loads((out / "conditioning.json").read_text())
    summary = result["summary"]
    assert summary["documents"] == len(result["documents"]) > 0
    for cond in ("none", "own", "best", "worst"):
        assert 0 < summary[cond]["loss"] < 20, summary
    assert isinstance(summary["gap_worst_minus_best"], float)
    held_out = {json.loads(line)["id"] for line in (out / "data" / "heldout.jsonl").read_text().splitlines()}
    trained = {json.loads(line)["id"] for line in (out / "data" / "train.jsonl").read_text().splitlines()}
    assert {d["id"] for d in result["documents"]} <= held_out and not held_out & trained


@pytest.mark.slow
def test_quick_demo_report_and_plots(quick_demo):
    out, _ = quick_demo
    report = (out / "report.md").read_text()
    for heading in ("# IXT demo report", "## Stages and wall time", "## Data", "## Training",
                    "## Conditioning", "## Generations"):
        assert heading in report
    assert "conditioning gap" in report.lower()
    for plot in ("loss_curves", "level_losses", "conditioning"):
        png = out / "plots" / f"{plot}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
        assert f"plots/{plot}.png" in report
    generations = json.loads((out / "generations.json").read_text())
    assert {(g["kind"], g["level"]) for g in generations} == {("prose", 5), ("prose", 1), ("code", 5), ("code", 1)}
    for g in generations:
        assert f"Quality: {g['level']}/5" in g["prefix"]
        assert "<|feedback|>" not in g["output"]


# --- pieces, no subprocess training ---------------------------------------------------------

def test_document_groups_keep_variants_and_chunks_together():
    group = pipeline.document_group
    assert group({"id": "humaneval/12/off_by_one", "variant": "off_by_one"}) == group({"id": "humaneval/12",
                                                                                        "variant": "reference"})
    assert group({"id": "stdlib/os.py:10-80"}) == group({"id": "stdlib/os.py:81-200"}) == "stdlib/os.py"
    assert group({"id": "prose/pydocs/library/os#3/keyword_list", "variant": "keyword_list"}) == \
        "prose/pydocs/library/os"
    assert group({"id": "gsm/7/stopped_early", "variant": "stopped_early"}) == "gsm/7"


def test_split_is_stable_and_disjoint(tmp_path):
    docs = [{"id": f"humaneval/{i}", "variant": "reference", "text": "x"} for i in range(200)]
    docs += [{"id": f"humaneval/{i}/off_by_one", "variant": "off_by_one", "text": "y"} for i in range(200)]
    src = tmp_path / "all.jsonl"
    pipeline.write_jsonl(src, docs)
    counts = pipeline.split_held_out(src, tmp_path / "train.jsonl", tmp_path / "held.jsonl", 0.1)
    held = pipeline.read_jsonl(tmp_path / "held.jsonl")
    train = pipeline.read_jsonl(tmp_path / "train.jsonl")
    assert counts == {"train": len(train), "held_out": len(held)} and 10 < len(held) < 80
    held_groups = {pipeline.document_group(d) for d in held}
    assert not held_groups & {pipeline.document_group(d) for d in train}
    assert len(held) == 2 * len(held_groups)  # each held-out problem with its broken variant
    pipeline.split_held_out(src, tmp_path / "t2.jsonl", tmp_path / "h2.jsonl", 0.1)
    assert (tmp_path / "h2.jsonl").read_bytes() == (tmp_path / "held.jsonl").read_bytes()


def test_failing_stage_reports_the_error_line_and_log(tmp_path):
    cmd = [sys.executable, "-c", "import sys\nprint('tool.py: error: bad input on line 3')\n"
           + "print('\\n'.join(f'noise {i}' for i in range(100)))\nsys.exit(3)"]
    with pytest.raises(pipeline.StageError) as info:
        pipeline.run_logged(cmd, tmp_path / "stage.log")
    message = str(info.value)
    assert "exit status 3" in message and "tool.py: error: bad input on line 3" in message
    assert str(tmp_path / "stage.log") in message and "noise 99" in message
    assert "noise 0\n" in (tmp_path / "stage.log").read_text()


def test_parse_generation_stops_at_log_lines():
    output = ("[12:00:00 rank 0] loaded ckpt\n[prefix] <|feedback|>Quality: 5/5<|/feedback|>\n[prompt] def \n"
              "[output] f(x):\n    return x\n[12:00:01 rank 0] done\n")
    parsed = run_demo.parse_generation(output)
    assert parsed == {"prefix": "<|feedback|>Quality: 5/5<|/feedback|>", "output": "f(x):\n    return x"}


def test_report_renders_from_minimal_inputs(tmp_path):
    from megatron_ixt.evaluation.report import write_report

    rows = [{"iteration": i, "consumed_samples": 16 * i, "lm loss": 8 - i / 10, "text loss": 8 - i / 10,
             "prefix loss": 5 - i / 5} for i in range(1, 21)]
    rows.append({"iteration": 20, "split": "validation", "lm loss": 6.1, "text loss": 6.2,
                 "text loss level 1": 6.0, "text loss level 5": 6.3})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = [{"id": i, "domain": "code", "level": 1 + i % 5, "tokens": 50,
             "loss": {"none": 5.0, "own": 4.9, "best": 4.8, "worst": 4.95}} for i in range(10)]
    summary = {"documents": 10, "gap_worst_minus_best": 0.15, "share_best_below_worst": 1.0,
               "own_minus_none_by_level": {"1": -0.1}, **{c: {"documents": 10, "loss": docs[0]["loss"][c]}
                                                          for c in ("none", "own", "best", "worst")}}
    (tmp_path / "conditioning.json").write_text(json.dumps({"summary": summary, "documents": docs}))
    files = write_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "+0.150 nats/token" in report and "## Generations" not in report  # no generations: no section
    assert all(f.exists() for f in files) and len(files) == 4


def test_output_dir_is_cleared_only_when_it_is_the_demos(tmp_path):
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    (foreign / "data").mkdir()
    with pytest.raises(pipeline.StageError, match="thesis.tex"):
        pipeline.prepare_output_dir(foreign, run_demo.OUTPUT_ENTRIES)
    assert (foreign / "data").is_dir()  # nothing removed

    old = tmp_path / "old_demo"  # what the former `make demo` target left: our entries only
    (old / "tensorboard").mkdir(parents=True)
    (old / "metrics.jsonl").write_text("{}\n")
    pipeline.prepare_output_dir(old, run_demo.OUTPUT_ENTRIES)
    assert sorted(p.name for p in old.iterdir()) == [pipeline.MARKER]
    (old / "notes.txt").write_text("mine")  # once marked, unknown files are left alone
    (old / "report.md").write_text("old report")
    pipeline.prepare_output_dir(old, run_demo.OUTPUT_ENTRIES)
    assert sorted(p.name for p in old.iterdir()) == sorted([pipeline.MARKER, "notes.txt"])


def test_training_progress_lines_are_shortened():
    line = ("[18:39:05 rank 1] iteration     25/400 | consumed samples 400 | ms/iter 883.0 | tokens/s 4,639 | "
            "TFLOP/s/device 0.020 | lr 2.999e-03 | lm loss 7.2358 | prefix loss 5.9146 | text loss 7.2980 | ...")
    assert run_demo.training_progress(line) == ("step 25/400: text loss 7.2980, prefix loss 5.9146, 883.0 ms/step, "
                                                 "4,639 tokens/s")
    valid = ("[18:39:29 rank 1] validation at iteration 50 | lm loss 5.4415 | prefix loss 0.3087 | text loss 5.6782 | "
             "text loss level 1 5.5501 | text loss level 5 5.8165")
    assert run_demo.training_progress(valid) == "validation at step 50: text loss 5.6782 (L1 5.5501, L5 5.8165)"
    assert run_demo.training_progress("[18:39:29 rank 0] saved checkpoint") is None
