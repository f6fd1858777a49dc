"""The demo's report: ``report.md`` and PNG plots from what the demo's stages wrote.

    python -m megatron_ixt.evaluation.report outputs/demo

Reads, from the output folder of ``examples/demo/run_demo.py``:

    metrics.jsonl        one JSON line per training step; validation rows carry "split"
    conditioning.json    tools/evaluate_conditioning.py: "summary" and "documents"
    generations.json     [{kind, prompt, feedback, level, prefix, output}, ...]
    stages.json          [{stage, seconds, note}, ...] (wall time per stage)
    demo.json            the demo's settings, held-out split and parallel layouts
    data/annotated.jsonl the corpus with the critics' feedback (for the data table)

and writes ``report.md`` and ``plots/{loss_curves,level_losses,conditioning}.png``.
Only the inputs that exist are reported on (the report of a failed run still renders).
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Optional

CONDITIONS = ("none", "own", "best", "worst")
# Level colours from bad (red) to good (green), dark enough to read on white.
LEVEL_COLORS = {1: "#c0392b", 2: "#e67e22", 3: "#b7950b", 4: "#7cb342", 5: "#1e8449"}
CONDITION_HELP = {"none": "no prefix", "own": "the document's own feedback",
                  "best": "best feedback (level 5)", "worst": "worst feedback (level 1)"}


# --- inputs -------------------------------------------------------------------------------

def read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """(training rows, validation rows) of a --log-file."""
    train, valid = [], []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                (valid if row.get("split") == "validation" else train).append(row)
    return train, valid


def quality_level(feedback: Optional[dict]) -> int:
    from megatron_ixt.data.levels import quality_level as level

    return level(feedback["score"], feedback.get("scale", (0, 10))) if feedback else 0


def corpus_table(annotated: Path) -> list[dict]:
    """Per source and variant: documents, mean score, documents per level."""
    groups: dict = defaultdict(list)
    if annotated.exists():
        for line in annotated.read_text(encoding="utf-8").splitlines():
            doc = json.loads(line)
            groups[(doc.get("source", doc.get("domain", "?")), doc.get("variant", "-"))].append(doc.get("feedback"))
    rows = []
    for (source, variant), feedbacks in sorted(groups.items()):
        levels = Counter(quality_level(f) for f in feedbacks)
        scores = [f["score"] for f in feedbacks if f]
        rows.append({"source": source, "variant": variant, "documents": len(feedbacks),
                     "mean_score": sum(scores) / len(scores) if scores else math.nan,
                     "levels": [levels.get(k, 0) for k in range(1, 6)]})
    return rows


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average (TensorBoard's smoothing), bias-corrected at the start."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def tail_mean(rows: list[dict], key: str, n: int = 25) -> float:
    values = [r[key] for r in rows[-n:] if key in r]
    return sum(values) / len(values) if values else math.nan


# --- plots --------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curves(train: list[dict], valid: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    its = [r["iteration"] for r in train]
    for key, color in (("text loss", "C0"), ("prefix loss", "C1")):
        values = [r.get(key, math.nan) for r in train]
        ax.plot(its, values, color=color, alpha=0.2, linewidth=0.8)
        ax.plot(its, smooth(values), color=color, label=f"train {key} (smoothed)")
    if valid:
        ax.plot([r["iteration"] for r in valid], [r["text loss"] for r in valid], "o-", color="C3",
                label="validation text loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Training and validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_level_losses(valid: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for level in range(1, 6):
        key = f"text loss level {level}"
        points = [(r["iteration"], r[key]) for r in valid if key in r]
        if points:
            ax.plot(*zip(*points), "o-", color=LEVEL_COLORS[level], label=f"level {level}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation text loss (nats/token)")
    ax.set_title("Validation text loss by the documents' quality level")
    ax.grid(alpha=0.3)
    ax.legend(title="critics' level")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gap_by(documents: list[dict], key: str) -> dict:
    """Mean (worst - best) per value of ``key`` ("level" or "domain"), token-weighted."""
    sums: dict = defaultdict(lambda: [0.0, 0, 0])
    for d in documents:
        if "best" in d["loss"] and "worst" in d["loss"]:
            s = sums[d.get(key) or "-"]
            s[0] += (d["loss"]["worst"] - d["loss"]["best"]) * d["tokens"]
            s[1] += d["tokens"]
            s[2] += 1
    return {k: {"gap": v[0] / v[1], "documents": v[2]} for k, v in sorted(sums.items(), key=lambda kv: str(kv[0]))}


def matched_gaps(documents: list[dict]) -> dict:
    """The gap in the direction the document's own level predicts: on good documents
    (level 4-5) the best prefix should win (worst - best > 0), on poor ones (level 1-2) the
    worst prefix should (best - worst > 0). The overall worst - best mixes both and can
    cancel out; these two cannot."""
    out = {}
    for name, levels, sign in (("good", (4, 5), 1), ("poor", (1, 2), -1)):
        rows = [d for d in documents if d.get("level") in levels and "best" in d["loss"] and "worst" in d["loss"]]
        tokens = sum(d["tokens"] for d in rows)
        gap = sum(sign * (d["loss"]["worst"] - d["loss"]["best"]) * d["tokens"] for d in rows) / tokens \
            if tokens else math.nan
        wins = sum(sign * (d["loss"]["worst"] - d["loss"]["best"]) > 0 for d in rows)
        out[name] = {"documents": len(rows), "gap": gap, "share": wins / len(rows) if rows else math.nan}
    return out


def plot_conditioning(summary: dict, documents: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [1, 1.3]})
    losses = [summary[c]["loss"] for c in CONDITIONS]
    bars = left.bar(CONDITIONS, losses, color=["0.6", "C0", "C2", "C3"])
    for bar, value in zip(bars, losses):
        left.annotate(f"{value:.3f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom")
    finite = [v for v in losses if math.isfinite(v)]
    if finite:
        spread = max(finite) - min(finite)
        left.set_ylim(min(finite) - max(3 * spread, 0.05), max(finite) + max(spread, 0.02))
    left.set_ylabel("held-out text loss (nats/token)")
    left.set_title(f"Same text, four prefixes\ngap worst - best = {summary['gap_worst_minus_best']:+.3f}")
    by_level = gap_by(documents, "level")
    names = [f"L{k}\n({v['documents']})" if k != "-" else f"none\n({v['documents']})" for k, v in by_level.items()]
    gaps = [v["gap"] for v in by_level.values()]
    right.bar(names, gaps, color=[LEVEL_COLORS.get(k, "0.6") for k in by_level])
    right.axhline(0, color="black", linewidth=0.8)
    right.set_ylabel("worst - best (nats/token)")
    right.set_xlabel("held-out documents by their own quality level (count)")
    right.set_title("Conditioning gap by document level")
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- report -------------------------------------------------------------------------------

def _f(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _section_stages(stages: list[dict]) -> list[str]:
    total = sum(s["seconds"] for s in stages)
    lines = ["## Stages and wall time", "", "| stage | wall time | result |", "|---|---:|---|"]
    lines += [f"| {s['stage']} | {s['seconds']:.1f} s | {s['note']} |" for s in stages]
    lines += [f"| **total** (before this report) | **{total:.0f} s** ({total / 60:.1f} min) | |", ""]
    return lines


def _section_data(rows: list[dict], demo: dict) -> list[str]:
    split = demo.get("split", {})
    lines = ["## Data: what the critics said", "",
             f"{sum(r['documents'] for r in rows)} documents; {split.get('train', '?')} for training, "
             f"{split.get('held_out', '?')} held out (whole groups: a program with its broken variants, a "
             "source file with all its chunks). The corpus builder only *makes* broken variants; the "
             "critics decide what is wrong (tests for code, the reference answer for math, rule-based "
             "signals for prose).", "",
             "| source | variant | documents | mean score /10 | level 1 / 2 / 3 / 4 / 5 |",
             "|---|---|---:|---:|---|"]
    lines += [f"| {r['source']} | {r['variant']} | {r['documents']} | {_f(r['mean_score'], 1)} | "
              f"{' / '.join(map(str, r['levels']))} |" for r in rows]
    return lines + [""]


def _section_training(train: list[dict], valid: list[dict], settings: dict) -> list[str]:
    last = train[-1] if train else {}
    tokens = last.get("consumed_samples", 0) * settings.get("seq_length", 0)
    lines = ["## Training", "",
             f"{last.get('iteration', 0)} steps, {tokens / 1e6:.2f}M tokens seen (16 sequences x "
             f"{settings.get('seq_length', '?')} tokens per step). Mean of the last 25 steps: "
             f"lm loss {_f(tail_mean(train, 'lm loss'))}, text loss {_f(tail_mean(train, 'text loss'))}, "
             f"prefix loss {_f(tail_mean(train, 'prefix loss'))} nats/token.", "",
             "![loss curves](plots/loss_curves.png)", ""]
    if valid:
        v = valid[-1]
        levels = [k for k in range(1, 6) if f"text loss level {k}" in v]
        lines += [f"Validation at step {v['iteration']} (documents of the 5% validation split of the training "
                  "data, each under its own prefix):", "",
                  "| lm loss | text loss | " + " | ".join(f"level {k}" for k in levels) + " |",
                  "|---:|---:|" + "---:|" * len(levels),
                  f"| {_f(v['lm loss'])} | {_f(v['text loss'])} | "
                  + " | ".join(_f(v[f"text loss level {k}"]) for k in levels) + " |", "",
                  "![text loss by level](plots/level_losses.png)", "",
                  "Levels differ in *content*, not only in quality (level 1 holds keyword lists and repeated "
                  "lines, which are easy to predict once seen), so this plot shows what each level's text "
                  "costs, not the effect of the prefix; the next section isolates that.", ""]
    return lines


def _section_conditioning(cond: dict, demo: dict) -> list[str]:
    s, docs = cond["summary"], cond["documents"]
    lines = ["## Conditioning: does the model use its feedback?", "",
             f"Each of {s['documents']} held-out documents (never trained on) is scored four times: the loss "
             "of exactly the same text tokens after four different prefixes. The checkpoint trained at "
             f"{demo.get('layouts', {}).get('train', 'TP=2')} is loaded at "
             f"{demo.get('layouts', {}).get('evaluate', 'PP=2')} (megatron-core reshards it).", "",
             "| condition | prefix | documents | text loss |", "|---|---|---:|---:|"]
    lines += [f"| {c} | {CONDITION_HELP[c]} | {s[c]['documents']} | {_f(s[c]['loss'], 4)} |" for c in CONDITIONS]
    lines += ["", f"**Conditioning gap (worst - best): {s['gap_worst_minus_best']:+.4f} nats/token**; the best "
              f"prefix gives the lower loss on {100 * s['share_best_below_worst']:.0f}% of the documents. "
              "A positive gap means the model has learned that the prefix predicts what follows.", "",
              "![conditioning](plots/conditioning.png)", ""]
    m = matched_gaps(docs)
    lines += ["The overall gap mixes documents on which the best prefix should win with documents on which the "
              "worst should (a keyword list *is* level-1 text). Split by the critics' level of each held-out "
              "document, the prefix that matches the document's level should give the lower loss:", "",
              "| held-out documents | documents | matching prefix lowers the loss by | documents where it does |",
              "|---|---:|---:|---:|",
              f"| level 4-5 (worst - best) | {m['good']['documents']} | {_f(m['good']['gap'], 4)} | "
              f"{_f(100 * m['good']['share'], 0)}% |",
              f"| level 1-2 (best - worst) | {m['poor']['documents']} | {_f(m['poor']['gap'], 4)} | "
              f"{_f(100 * m['poor']['share'], 0)}% |", ""]
    by_domain = gap_by(docs, "domain")
    if by_domain:
        lines += ["| domain | documents | gap worst - best |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['documents']} | {v['gap']:+.4f} |" for k, v in by_domain.items()]
        lines.append("")
    own = s.get("own_minus_none_by_level") or {}
    if own:
        lines += ["Own feedback minus no prefix, by the document's level (negative: its true feedback "
                  "helps): " + ", ".join(f"L{k} {v:+.3f}" for k, v in own.items()), ""]
    return lines


def _section_generations(generations: list[dict]) -> list[str]:
    lines = ["## Generations under the best and the worst feedback", "",
             "Same prompt, same seed, same sampling (top-k 20, temperature 0.8); only the prefix differs. "
             "The delimiter tokens are blocked, so the model cannot write a prefix of its own.", ""]
    for g in generations:
        lines += [f"**{g['kind']}, {g['feedback']} feedback** (`{g['prefix']}`), prompt `{g['prompt']!r}`:", "",
                  "```", (g["prompt"] + g["output"]).replace("```", "'''"), "```", ""]
    return lines


def write_report(out_dir: Path) -> list[Path]:
    """Render ``report.md`` and the plots into ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    train, valid = read_metrics(out_dir / "metrics.jsonl")
    cond = read_json(out_dir / "conditioning.json")
    generations = read_json(out_dir / "generations.json") or []
    stages = read_json(out_dir / "stages.json") or []
    demo = read_json(out_dir / "demo.json") or {}
    settings = demo.get("settings", {})
    written = []

    lines = ["# IXT demo report", "",
             "Introspective Training on a CPU: documents are critiqued by offline critics, and a small GPT "
             "is trained on `[feedback prefix] + [document]` "
             f"(template `{settings.get('template', 'quality')}`"
             f"{', quick budget' if demo.get('quick') else ''}). See docs/demo.md for how to read this.", ""]
    if cond:
        s = cond["summary"]
        lines += ["**Headline.** "
                  f"Final training text loss {_f(tail_mean(train, 'text loss'))} nats/token; held-out text loss "
                  f"{_f(s['none']['loss'])} with no prefix, {_f(s['best']['loss'])} under the best and "
                  f"{_f(s['worst']['loss'])} under the worst feedback: a conditioning gap of "
                  f"**{s['gap_worst_minus_best']:+.3f} nats/token** (best < worst on "
                  f"{100 * s['share_best_below_worst']:.0f}% of documents). Split by the documents' own level, "
                  f"the matching prefix lowers the loss by {_f(matched_gaps(cond['documents'])['good']['gap'])} on "
                  f"level 4-5 and {_f(matched_gaps(cond['documents'])['poor']['gap'])} nats/token on level 1-2 "
                  "documents.", ""]
    lines += _section_stages(stages) if stages else []
    lines += _section_data(corpus_table(out_dir / "data" / "annotated.jsonl"), demo)
    if train:
        plot_loss_curves(train, valid, plots / "loss_curves.png")
        plot_level_losses(valid, plots / "level_losses.png")
        written += [plots / "loss_curves.png", plots / "level_losses.png"]
        lines += _section_training(train, valid, settings)
    if cond:
        plot_conditioning(cond["summary"], cond["documents"], plots / "conditioning.png")
        written.append(plots / "conditioning.png")
        lines += _section_conditioning(cond, demo)
    if generations:
        lines += _section_generations(generations)
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    return [report, *written]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m megatron_ixt.evaluation.report OUTPUT_DIR", file=sys.stderr)
        return 2
    out_dir = Path(argv[0])
    if not (out_dir / "metrics.jsonl").exists() and not (out_dir / "conditioning.json").exists():
        print(f"report: error: {out_dir} holds neither metrics.jsonl nor conditioning.json "
              "(not the output folder of examples/demo/run_demo.py?)", file=sys.stderr)
        return 1
    files = write_report(out_dir)
    print(f"wrote {', '.join(str(p.relative_to(out_dir)) for p in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
