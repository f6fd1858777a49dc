"""The demo driver (examples/demo/run_demo.py) end to end with its --quick budget, and its
pieces (held-out split, failure reporting, the ratio arithmetic, the report) on their own.

The end-to-end test runs every real stage (corpus, critics, tokenizer, four preprocessings,
eight trainings side by side, measurements, evaluation at PP=2, report): about 4-5 minutes on
two busy cores."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.launch import REPO, child_env



import pipeline  # noqa: E402
import run_demo  # noqa: E402, F401

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    # --no-python-docs: no apt-get download from a test (the stages are the same).
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "demo" / "run_demo.py"), "--quick",
                           "--no-python-docs", "--output-dir", str(out)],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout[-5000:]}\n--- stderr\n{proc.stderr[-5000:]}"
    return out, proc.stdout


@pytest.mark.slow
def test_quick_demo_progress_lines_and_outputs(quick_demo):
    out, stdout = quick_demo
    for i, stage in enumerate(["corpus", "annotate", "split", "tokenizer", "preprocess", "train", "measure",
                               "evaluate", "report"], 1):
        assert f"[{i}/9] {stage:<12} done in " in stdout, stdout
    stages = json.loads((out / "stages.json").read_text())
    assert [s["stage"] for s in stages][-1] == "report" and all(s["seconds"] >= 0 for s in stages)
    assert "pydoc topics only" in stdout  # the missing Python docs are said, not skipped silently
    for name in ("corpus", "annotate", "evaluate", "report", "train_ixt_s1234", "measure_bos_s1235",
                 "train_same_s1235"):
        assert (out / "logs" / f"{name}.log").read_text().startswith("$ ")


@pytest.mark.slow
def test_quick_demo_every_run_trains_and_its_loss_falls(quick_demo):
    out, _ = quick_demo
    for kind in ("plain", "bos", "ixt", "same"):
        for seed in (1234, 1235):
            rows = [json.loads(line) for line in (out / "metrics" / f"{kind}_s{seed}.jsonl").read_text().splitlines()
                    if line.strip()]
            rows = [r for r in rows if "split" not in r and "lm loss" in r]  # training steps, not validation
            steps = [r["iteration"] for r in rows]
            assert steps[-1] == 10, (kind, seed, steps)
            losses = [r["lm loss"] for r in rows]
            # From ~ln(vocab) at the start, ten steps of lr 3e-3 take off at least half a nat.
            assert losses[-1] < losses[0] - 0.5, (kind, seed, losses)


@pytest.mark.slow
def test_quick_demo_datasets_differ_only_by_what_they_should(quick_demo):
    out, _ = quick_demo
    meta = {kind: json.loads((out / "data" / f"{kind}_text_document.meta.json").read_text())
            for kind in ("plain", "bos", "ixt", "same")}
    counts = {kind: m["counts"] for kind, m in meta.items()}
    docs = counts["plain"]["documents"]
    assert counts["bos"]["documents"] == counts["ixt"]["documents"] == docs > 0
    assert meta["bos"]["prepend_bos"] is True and meta["plain"]["prepend_bos"] is False
    # Same text tokens; the control adds exactly one <s> per document; IXT adds prefixes
    # within the demo template's budget (48 tokens plus the two delimiters).
    assert counts["bos"]["tokens"] - counts["plain"]["tokens"] == docs
    assert counts["ixt"]["text_tokens"] == counts["plain"]["text_tokens"]
    assert counts["ixt"]["prefix_tokens"] == counts["ixt"]["tokens"] - counts["plain"]["tokens"]
    assert 0 < counts["ixt"]["prefix_tokens"] <= (48 + 2) * counts["ixt"]["prefixed_documents"]
    assert meta["ixt"]["template"]["name"] == "critique-demo" and meta["plain"]["template"]["name"] == "none"
    # The same-critique control: the same text, and one prefix for every prefixed document.
    assert meta["same"]["template"]["name"] == "same-critique-demo"
    assert counts["same"]["text_tokens"] == counts["plain"]["text_tokens"]
    same_prefix = counts["same"]["prefix_tokens"] / counts["same"]["prefixed_documents"]
    assert same_prefix == int(same_prefix) and 30 <= same_prefix <= 48 + 2, same_prefix
    assert counts["same"]["prefixed_documents"] == counts["ixt"]["prefixed_documents"]


@pytest.mark.slow
def test_quick_demo_measures_every_run_on_the_same_tokens(quick_demo):
    out, _ = quick_demo
    measured = {p.stem: json.loads(p.read_text()) for p in (out / "measurements").glob("*.json")}
    assert sorted(measured) == sorted(f"{k}_s{s}" for k in ("plain", "bos", "ixt", "same") for s in (1234, 1235))
    assert len({m["text_tokens"] for m in measured.values()}) == 1  # same documents, same windows
    for name, m in measured.items():
        curve = m["curves"][name]
        assert [p["iteration"] for p in curve] == [5, 10]
        kind = name.split("_")[0]
        keys = {"plain": {"none"}, "bos": {"bos"}, "ixt": {"none", "best"}, "same": {"best"}}[kind]
        assert all(keys <= set(p) and all(0 < p[k] < 20 for k in keys) for p in curve)
        assert ("worst" in curve[-1]) == (kind == "ixt")  # the gap on good documents, at the end
        prompts = len((out / "data" / "prompts.jsonl").read_text().splitlines())
        assert sorted(m["task"]) == sorted(f"{name}/{c}" for c in {"plain": ["none"], "bos": ["bos"],
                                                                    "ixt": ["best", "worst"], "same": []}[kind])
        for task in m["task"].values():
            assert task["by_kind"]["prose"]["samples"] == prompts  # one continuation per prompt


@pytest.mark.slow
def test_quick_demo_report_leads_with_the_fair_ratio(quick_demo):
    from report import load_runs, tokens_to_reach

    out, _ = quick_demo
    report = (out / "report.md").read_text()
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Headline: IXT against the better of two references"
    for heading in ("## Task metric", "## Conditioning gap by flaw type", "## Generations under the best",
                    "## Data: the critics' levels", "## Stages and wall time"):
        assert any(s.startswith(heading) for s in sections), sections
    for plot in ("loss_vs_tokens", "gap_by_flaw"):
        png = out / "plots" / f"{plot}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000 and f"plots/{plot}.png" in report
    # The reported ratios are the measured curves' (recomputed here independently).
    results = json.loads((out / "results.json").read_text())
    runs = load_runs(out)
    for row in results["ratio_rows_best"]:
        if row["better"] is None:  # neither reference got there: both are lower bounds
            assert all(r["ratio"] is None and r["lower_bound"] > 0 for r in row["refs"].values())
            continue
        ref_run = runs[f"{row['better']}_s{row['seed']}"]
        key = {"plain": "none", "bos": "bos"}[row["better"]]
        needed, _ = tokens_to_reach(ref_run["curve"], key, row["ixt_loss"])
        got = row["refs"][row["better"]]["ratio"]
        assert (needed is None and got is None) or abs(needed / row["tokens"] - got) < 1e-9
        for other in row["refs"].values():  # the better reference needs no more tokens than the other
            if other["tokens"] is not None:
                assert row["refs"][row["better"]]["tokens"] is not None
                assert row["refs"][row["better"]]["tokens"] <= other["tokens"]
    assert {r["kind"] for r in results["task"]} == {"plain", "bos", "ixt"}
    assert "### IXT against the same-critique control" in report
    for row in results["ratio_rows_same"]:  # the control's ratio, also from its logged curve
        needed, _ = tokens_to_reach(runs[f"same_s{row['seed']}"]["curve"], "best", row["ixt_loss"])
        got = row["refs"]["same"]["ratio"]
        assert (needed is None and got is None) or abs(needed / row["tokens"] - got) < 1e-9
    assert all(0 <= r["ci95"][0] <= r["share"] <= r["ci95"][1] <= 1 for r in results["task"])


@pytest.mark.slow
def test_quick_demo_conditioning_uses_training_critiques(quick_demo):
    out, _ = quick_demo
    result = json.loads((out / "conditioning.json").read_text())
    summary = result["summary"]
    assert summary["documents"] == len(result["documents"]) > 0
    for cond in ("none", "own", "best", "worst"):
        assert 0 < summary[cond]["loss"] < 20, summary
    # The reported gap is the per-document losses' (token-weighted), recomputed here.
    docs = result["documents"]
    tokens = sum(d["tokens"] for d in docs)
    for cond in ("best", "worst"):
        assert abs(sum(d["loss"][cond] * d["tokens"] for d in docs) / tokens - summary[cond]["loss"]) < 1e-6
    assert abs(summary["gap_worst_minus_best"] - (summary["worst"]["loss"] - summary["best"]["loss"])) < 1e-9
    share = sum(d["loss"]["best"] < d["loss"]["worst"] for d in docs) / len(docs)
    assert abs(summary["share_best_below_worst"] - share) < 1e-9
    held_out = {json.loads(line)["id"] for line in (out / "data" / "heldout.jsonl").read_text().splitlines()}
    trained = [json.loads(line) for line in (out / "data" / "train.jsonl").read_text().splitlines()]
    assert {d["id"] for d in result["documents"]} <= held_out and not held_out & {d["id"] for d in trained}
    train_feedback = {json.dumps(d["feedback"], sort_keys=True) for d in trained}
    for line in (out / "data" / "heldout_eval.jsonl").read_text().splitlines():
        doc = json.loads(line)  # best and worst prefixes are critiques the critics wrote in training
        assert json.dumps(doc["best_feedback"], sort_keys=True) in train_feedback
        assert json.dumps(doc["worst_feedback"], sort_keys=True) in train_feedback
        assert doc["best_feedback"]["score"] >= doc["worst_feedback"]["score"]


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


def test_output_dir_is_cleared_only_when_it_is_the_demos(tmp_path):
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    (foreign / "data").mkdir()
    with pytest.raises(pipeline.StageError, match="thesis.tex"):
        pipeline.prepare_output_dir(foreign, run_demo.OUTPUT_ENTRIES)
    assert (foreign / "data").is_dir()  # nothing removed

    old = tmp_path / "old_demo"  # what an unmarked earlier demo left: our entries only
    (old / "metrics").mkdir(parents=True)
    (old / "results.json").write_text("{}\n")
    pipeline.prepare_output_dir(old, run_demo.OUTPUT_ENTRIES)
    assert sorted(p.name for p in old.iterdir()) == [pipeline.MARKER]
    (old / "notes.txt").write_text("mine")  # once marked, unknown files are left alone
    (old / "report.md").write_text("old report")
    pipeline.prepare_output_dir(old, run_demo.OUTPUT_ENTRIES)
    assert sorted(p.name for p in old.iterdir()) == sorted([pipeline.MARKER, "notes.txt"])


def test_tokens_to_reach_interpolates_and_never_extrapolates():
    from report import tokens_to_reach

    curve = [{"tokens": 100, "loss": 6.0}, {"tokens": 200, "loss": 5.0}, {"tokens": 300, "loss": 4.5}]
    assert tokens_to_reach(curve, "loss", 5.5) == (150.0, "=")
    assert tokens_to_reach(curve, "loss", 4.75) == (250.0, "=")
    assert tokens_to_reach(curve, "loss", 6.5) == (100.0, "<=")  # an upper bound, said so
    assert tokens_to_reach(curve, "loss", 4.4) == (None, "not reached")


def test_wilson_interval_matches_known_values():
    from report import wilson

    low, high = wilson(50, 100)
    assert abs(low - 0.4038) < 1e-3 and abs(high - 0.5962) < 1e-3
    low, high = wilson(0, 20)
    assert low == 0.0 and abs(high - 0.1611) < 1e-3


def _curve(losses, key, step_tokens=1000):
    return [{"iteration": 10 * (i + 1), "tokens": 10 * (i + 1) * step_tokens, key: v} for i, v in enumerate(losses)]


def test_fair_ratio_takes_the_better_reference_and_bounds_the_unreached(tmp_path):
    from report import write_report

    (tmp_path / "measurements").mkdir()
    curves = {"plain_s1": _curve([6.0, 5.0, 4.6, 4.4], "none"), "bos_s1": _curve([5.8, 4.8, 4.4, 4.2], "bos"),
              "ixt_s1": [{**p, "none": p["best"] + 0.05, "worst": p["best"] + 0.1}
                         for p in _curve([5.2, 4.6, 4.3, 4.1], "best")]}
    for name, curve in curves.items():
        (tmp_path / "measurements" / f"{name}.json").write_text(json.dumps(
            {"curves": {name: curve}, "task": {}, "tokens_per_step": 1000, "text_tokens": 1}))
    (tmp_path / "demo.json").write_text(json.dumps({"settings": {"train_iters": 40}}))
    write_report(tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {r["iteration"]: r for r in results["ratio_rows_best"]}
    # Half budget (step 20, loss 4.6): plain reaches 4.6 at 30k tokens, bos at 25k (half-way
    # from 4.8 at 20k to 4.4 at 30k): bos is the better reference, ratio 25k / 20k = 1.25.
    assert rows[20]["better"] == "bos" and abs(rows[20]["refs"]["bos"]["ratio"] - 1.25) < 1e-9
    assert abs(rows[20]["refs"]["plain"]["ratio"] - 1.5) < 1e-9
    # Final (step 40, loss 4.1): neither reference gets there: a lower bound, not a number.
    assert rows[40]["refs"]["bos"]["ratio"] is None and rows[40]["refs"]["bos"]["lower_bound"] == 1.0
    report = (tmp_path / "report.md").read_text()
    assert "**Fair ratio at half the budget: 1.25x" in report and "> 1.00x (not reached)" in report


def test_best_and_worst_feedback_are_the_critics_extremes_per_domain():
    from references import best_worst_by_domain

    train = [{"domain": "prose", "feedback": {"score": 9, "critique": "Passes."}},
             {"domain": "prose", "feedback": {"score": 9, "critique": "Good."}},
             {"domain": "prose", "feedback": {"score": 9, "critique": "Passes."}},
             {"domain": "prose", "feedback": {"score": 2, "critique": "Misspelt."}},
             {"domain": "math", "feedback": {"score": 10, "critique": "Right."}},
             {"domain": "math", "feedback": {"score": 1, "critique": "Wrong."}},
             {"domain": "math", "text": "no feedback"}]
    picked = best_worst_by_domain(train)
    assert picked["prose"]["best"]["critique"] == "Passes."  # the most common of the top score
    assert picked["prose"]["worst"]["critique"] == "Misspelt."
    assert picked["math"] == {"best": {"score": 10, "critique": "Right."}, "worst": {"score": 1, "critique": "Wrong."}}



@pytest.mark.slow
def test_ixt_vs_baseline_adds_quality_prefixes_to_the_demo(quick_demo, tmp_path):
    out, _ = quick_demo
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "ixt_vs_baseline" / "run.py"), "--demo-dir",
                           str(out), "--output-dir", str(tmp_path / "ivb")],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    measured = sorted(p.stem for p in (tmp_path / "ivb" / "measurements").glob("*.json"))
    assert measured == sorted([f"{k}_s{s}" for k in ("plain", "bos", "ixt", "same", "ixtq") for s in (1234, 1235)])
    text_tokens = {json.loads((tmp_path / "ivb" / "measurements" / f"{m}.json").read_text())["text_tokens"]
                   for m in measured}
    assert len(text_tokens) == 1, text_tokens  # quality-level runs scored on the demo's very tokens
    meta = json.loads((tmp_path / "ivb" / "data" / "ixtq_text_document.meta.json").read_text())
    assert meta["template"]["name"] == "quality"
    results = (tmp_path / "ivb" / "results.md").read_text()
    assert "quality-level prefixes" in results and "critique prefixes" in results
    assert (tmp_path / "ivb" / "loss_vs_tokens.png").read_bytes()[:8] == PNG_MAGIC


def test_same_critique_template_renders_one_prefix_for_every_document():
    from megatron_ixt.format.prefixes import load_template, render_prefix

    same = load_template(str(REPO / "examples" / "demo" / "same_critique_template.yaml"))
    ixt = load_template(str(REPO / "examples" / "demo" / "critique_template.yaml"))
    good = {"score": 10, "scale": [0, 10], "axes": {"writing_style": 10}, "critique": "Passes all rules."}
    bad = {"score": 0, "scale": [0, 10], "axes": {"writing_style": 0}, "critique": "Fails: misspelt."}
    assert render_prefix(same, good) == render_prefix(same, bad)  # carries no information
    assert render_prefix(ixt, good) != render_prefix(ixt, bad)
    assert same.max_tokens == ixt.max_tokens and same.kind == ixt.kind == "critique"
