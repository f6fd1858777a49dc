"""The demo's report: ``report.md``, ``results.json`` and ``plots/*.png`` from a demo output
folder (``examples/demo/run_demo.py``), re-renderable on its own:

    python examples/demo/report.py outputs/demo

It leads with the fair comparison: the compute-efficiency ratio of IXT under its best
feedback against the *better* of two references (plain training, and plain training with
a beginning-of-document token), per seed. The ratio is the number of training tokens the
reference needs to reach IXT's held-out loss on good documents, divided by IXT's tokens,
read off the reference's measured curve by linear interpolation between checkpoints and
never extrapolated: when the reference never gets that low, the ratio is only known to
exceed (reference budget / IXT's tokens) and is shown as "> x".

Two IXT checkpoints are compared, fixed before any run: the final one (the whole budget)
and the one at half the budget, the latest point at which a ratio of up to 2x can be
measured without extrapolation.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from megatron_ixt.evaluation.stats import wilson  # noqa: E402

REFERENCES = {"plain": "none", "bos": "bos"}  # run kind -> the condition its loss is read under
KIND_LABELS = {"plain": "plain", "bos": "plain + BOS token (control)", "ixt": "IXT",
               "same": "same critique for every document (control)"}
# The same-critique control is read under its one fixed prefix (measure.py's "best").
SAME_CRITIQUE = {"same": "best"}


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def tokens_to_reach(curve: list[dict], key: str, target: float) -> tuple[Optional[float], str]:
    """Tokens at which ``curve`` (points with ``tokens`` and ``key``) first gets down to
    ``target``, interpolated linearly between checkpoints. ("<=", tokens) when the first
    checkpoint is already there (an upper bound); (None, "not reached") when it never is."""
    if not curve:
        return None, "no curve"
    if curve[0][key] <= target:
        return float(curve[0]["tokens"]), "<="
    for a, b in zip(curve, curve[1:]):
        if b[key] <= target:
            frac = (a[key] - target) / (a[key] - b[key])
            return a["tokens"] + frac * (b["tokens"] - a["tokens"]), "="
    return None, "not reached"


def load_runs(out: Path) -> dict[str, dict]:
    """run name -> its measurement (curves, task), with ``kind`` and ``seed`` parsed."""
    runs = {}
    for path in sorted((out / "measurements").glob("*.json")):
        data = json.loads(path.read_text())
        name = path.stem
        kind, _, seed = name.rpartition("_s")
        runs[name] = {"kind": kind, "seed": int(seed), "curve": data["curves"][name],
                      "task": data.get("task", {}), "tokens_per_step": data["tokens_per_step"]}
    return runs


def ratio_rows(runs: dict[str, dict], ixt_key: str, references=REFERENCES, ixt_kind: str = "ixt") -> list[dict]:
    """Per seed and IXT checkpoint: the ratio against each reference and the better one."""
    rows = []
    for name, run in sorted(runs.items()):
        if run["kind"] != ixt_kind:
            continue
        refs = {kind: r for r in runs.values() for kind in [r["kind"]]
                if kind in references and r["seed"] == run["seed"]}
        for point in run["curve"]:
            row = {"seed": run["seed"], "iteration": point["iteration"], "tokens": point["tokens"],
                   "ixt_loss": point[ixt_key], "refs": {}}
            for kind, ref in sorted(refs.items()):
                needed, how = tokens_to_reach(ref["curve"], references[kind], point[ixt_key])
                budget = ref["curve"][-1]["tokens"] if ref["curve"] else 0
                row["refs"][kind] = {"tokens": needed, "how": how, "final_loss": ref["curve"][-1][references[kind]],
                                     "ratio": needed / point["tokens"] if needed is not None else None,
                                     "lower_bound": budget / point["tokens"] if needed is None else None}
            # The better reference reaches the loss with fewer tokens (never: infinitely many).
            better = min(row["refs"], key=lambda k: (row["refs"][k]["tokens"] is None,
                                                     row["refs"][k]["tokens"] or 0), default=None)
            # Neither got there: no better reference, the ratio is a lower bound for both.
            row["better"] = better if better and row["refs"][better]["tokens"] is not None else None
            rows.append(row)
    return rows


def fmt_ratio(ref: dict) -> str:
    if ref["ratio"] is not None:
        return ("<=" if ref["how"] == "<=" else "") + f"{ref['ratio']:.2f}x"
    return f"> {ref['lower_bound']:.2f}x (not reached)"


def headline_points(rows: list[dict], train_iters: int) -> dict[str, list[dict]]:
    """The rows at the final checkpoint and at half the budget (fixed in advance)."""
    out: dict[str, list[dict]] = {"final": [], "half": []}
    for seed in sorted({r["seed"] for r in rows}):
        mine = [r for r in rows if r["seed"] == seed]
        out["final"].append(max(mine, key=lambda r: r["iteration"]))
        halves = [r for r in mine if r["iteration"] <= train_iters // 2]
        if halves:
            out["half"].append(max(halves, key=lambda r: r["iteration"]))
    return out


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}x"
    mean = sum(values) / len(values)
    return f"{mean:.2f}x (seeds: {', '.join(f'{v:.2f}' for v in values)}; range {min(values):.2f}-{max(values):.2f})"


def task_table(runs: dict[str, dict]) -> list[dict]:
    """Accepted share of prose continuations per (kind, condition), pooled over seeds."""
    pooled: dict[tuple[str, str], list[int]] = {}
    for run in runs.values():
        for key, task in run["task"].items():
            cond = key.rsplit("/", 1)[1]
            prose = task["by_kind"].get("prose")
            if prose:
                acc = pooled.setdefault((run["kind"], cond), [0, 0])
                acc[0] += prose["accepted"]
                acc[1] += prose["samples"]
    rows = []
    for (kind, cond), (accepted, n) in sorted(pooled.items()):
        low, high = wilson(accepted, n)
        rows.append({"kind": kind, "condition": cond, "accepted": accepted, "samples": n,
                     "share": accepted / n if n else math.nan, "ci95": [low, high]})
    return rows


def gap_by_flaw(out: Path) -> list[dict]:
    """Conditioning gap (worst - best, token-weighted) on held-out documents, by variant."""
    path = out / "conditioning.json"
    if not path.exists():
        return []
    docs = json.loads(path.read_text())["documents"]
    variant = {str(d.get("id")): d.get("variant", "reference") for d in _read_jsonl(out / "data" / "heldout_eval.jsonl")}
    groups: dict[str, list[dict]] = {}
    for d in docs:
        if "best" not in d["loss"] or "worst" not in d["loss"]:
            continue
        v = variant.get(str(d["id"]), "?")
        groups.setdefault(f"{d.get('domain')}/{v}", []).append(d)
        if d.get("level", 0) >= 4:
            groups.setdefault("ALL good (level 4-5)", []).append(d)
        groups.setdefault("ALL held-out", []).append(d)
    rows = []
    for name, items in sorted(groups.items(), key=lambda kv: (not kv[0].startswith("ALL"), kv[0])):
        tokens = sum(d["tokens"] for d in items)
        gap = sum((d["loss"]["worst"] - d["loss"]["best"]) * d["tokens"] for d in items) / tokens
        own = sum((d["loss"]["own"] - d["loss"]["none"]) * d["tokens"] for d in items if "own" in d["loss"]) / tokens
        rows.append({"group": name, "documents": len(items), "tokens": tokens, "gap": gap,
                     "share_best_below_worst": sum(d["loss"]["best"] < d["loss"]["worst"] for d in items) / len(items),
                     "own_minus_none": own})
    return rows


def critic_levels(out: Path) -> list[dict]:
    """How the critics leveled each source/variant of the corpus (the builder set none)."""
    from megatron_ixt.format.levels import quality_level

    table: dict[str, list[int]] = {}
    for doc in _read_jsonl(out / "data" / "annotated.jsonl"):
        fb = doc.get("feedback") or {}
        if fb.get("score") is None:
            continue
        key = f"{doc.get('domain')}/{doc.get('variant', 'reference')}"
        table.setdefault(key, [0] * 5)[quality_level(fb["score"], tuple(fb.get("scale", (0, 10)))) - 1] += 1
    return [{"group": k, "levels": v} for k, v in sorted(table.items())]


def plot_curves(runs: dict[str, dict], path: Path, extra_styles: Optional[dict] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {("plain", "none"): ("tab:gray", "plain"), ("bos", "bos"): ("tab:blue", "plain + BOS (control)"),
              ("ixt", "best"): ("tab:red", "IXT, best feedback"), ("ixt", "none"): ("tab:orange", "IXT, no prefix"),
              ("same", "best"): ("tab:purple", "same critique for all (control)"),
              **(extra_styles or {})}
    for (kind, key), (color, label) in styles.items():
        mine = [r for r in runs.values() if r["kind"] == kind]
        for i, run in enumerate(sorted(mine, key=lambda r: r["seed"])):
            xs = [p["tokens"] / 1e6 for p in run["curve"]]
            ys = [p[key] for p in run["curve"]]
            ax.plot(xs, ys, color=color, marker="o", markersize=3, alpha=0.9 if i == 0 else 0.5,
                    linestyle="-" if i == 0 else "--", label=f"{label} (seed {run['seed']})")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("held-out loss, good documents (nats/token)")
    kinds = {r["kind"] for r in runs.values()}
    ax.set_title("Loss vs tokens: " + ", ".join(label for kind, label in (
        ("plain", "plain"), ("bos", "plain + BOS"), ("ixt", "IXT"), ("same", "same-critique control"),
        *((k, k) for k in sorted(kinds - set(KIND_LABELS)))) if kind in kinds))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gaps(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.5))
    ax.barh([r["group"] for r in rows], [r["gap"] for r in rows], color="tab:red")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("worst - best feedback, nats/token (positive: the model uses its feedback)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path) -> list[Path]:
    out = Path(out)
    demo = json.loads((out / "demo.json").read_text()) if (out / "demo.json").exists() else {"settings": {}}
    settings = demo.get("settings", {})
    stages = json.loads((out / "stages.json").read_text()) if (out / "stages.json").exists() else []
    runs = load_runs(out)
    train_iters = int(settings.get("train_iters") or max((p["iteration"] for r in runs.values() for p in r["curve"]),
                                                         default=0))
    best_rows = ratio_rows(runs, "best")
    none_rows = ratio_rows(runs, "none", references={"plain": "none"})
    same_rows = ratio_rows(runs, "best", references=SAME_CRITIQUE)
    heads_same = headline_points(same_rows, train_iters)
    heads = headline_points(best_rows, train_iters)
    heads_none = headline_points(none_rows, train_iters)
    task = task_table(runs)
    gaps = gap_by_flaw(out)
    levels = critic_levels(out)
    files = [out / "report.md", out / "results.json", out / "plots" / "loss_vs_tokens.png"]
    if runs:
        plot_curves(runs, files[2])
    if gaps:
        files.append(out / "plots" / "gap_by_flaw.png")
        plot_gaps(gaps, files[3])

    def better_ratio(row: dict) -> Optional[float]:
        return row["refs"][row["better"]]["ratio"] if row.get("better") else None

    lines = ["# IXT demo report", ""]
    # -- headline -------------------------------------------------------------------------
    lines += ["## Headline: IXT against the better of two references", "",
              "Compute-efficiency ratio = training tokens the reference needs to reach IXT's held-out loss on "
              "good documents (critics' level 4-5; IXT read under its best feedback) / IXT's tokens. "
              "Measured on each reference's curve, never extrapolated (\"> x\": the reference never got there "
              "within its budget). References: plain next-token training, and the same with a "
              "beginning-of-document token (the control: a constant start that carries no information).", ""]
    lines += ["| IXT checkpoint | seed | IXT tokens | IXT loss (best feedback) | vs plain | vs plain + BOS | "
              "better reference | ratio vs better |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    for label, key in (("half budget", "half"), ("final", "final")):
        for row in heads[key]:
            refs = row["refs"]
            lines.append(f"| {label} (step {row['iteration']}) | {row['seed']} | {row['tokens'] / 1e6:.2f}M | "
                         f"{row['ixt_loss']:.4f} | {fmt_ratio(refs['plain']) if 'plain' in refs else 'n/a'} | "
                         f"{fmt_ratio(refs['bos']) if 'bos' in refs else 'n/a'} | {row['better'] or 'neither reached'} | "
                         f"{fmt_ratio(refs[row['better']]) if row['better'] else min(map(fmt_ratio, refs.values()))} |")
    summary = {}
    for key in ("half", "final"):
        values = [better_ratio(r) for r in heads[key]]
        measured = [v for v in values if v is not None]
        text = spread(measured) if len(measured) == len(values) else \
            (f"not measurable on {len(values) - len(measured)} of {len(values)} seeds (reference never reached "
             f"IXT's loss: " + ", ".join(fmt_ratio(r["refs"][r["better"]]) if r["better"] else
                                         min(map(fmt_ratio, r["refs"].values())) for r in heads[key]) + ")")
        bounds = [r["seed"] for r in heads[key] if r.get("better") and r["refs"][r["better"]]["how"] == "<="]
        if bounds:  # reached at the reference's first checkpoint: only an upper bound
            text += f" (an upper bound on seed(s) {', '.join(map(str, bounds))}: reached at the first checkpoint)"
        summary[key] = {"ratios": values, "text": text}
    lines += ["", f"**Fair ratio at half the budget: {summary['half']['text']}.** "
                  f"At the final checkpoint: {summary['final']['text']}.", ""]
    headline = f"headline: fair ratio {summary['half']['text']} at half budget; final {summary['final']['text']}"
    lines += ["![loss vs tokens](plots/loss_vs_tokens.png)", ""]
    # -- IXT without a prefix vs plain ----------------------------------------------------
    lines += ["### IXT without a prefix against plain training", "",
              "The same text, no prefix for either model: what training on feedback did to the unconditional model.",
              "", "| IXT checkpoint | seed | IXT loss (no prefix) | plain's final loss | ratio vs plain |",
              "|---|---:|---:|---:|---:|"]
    for label, key in (("half budget", "half"), ("final", "final")):
        for row in heads_none[key]:
            ref = row["refs"].get("plain")
            if ref:
                lines.append(f"| {label} (step {row['iteration']}) | {row['seed']} | {row['ixt_loss']:.4f} | "
                             f"{ref['final_loss']:.4f} | {fmt_ratio(ref)} |")
    # -- IXT vs the same-critique control ------------------------------------------------
    if any("same" in row["refs"] for row in same_rows):  # the control ran (--kinds ...,same)
        lines += ["", "### IXT against the same-critique control", "",
                  "Every document of the control carries one fixed critique of the same length "
                  "(examples/demo/same_critique_template.yaml): the prefix text without the feedback's "
                  "information. IXT's advantage over it is what the feedback's *content* is worth; "
                  "the control's advantage over plain + BOS is what a long constant document start is worth.",
                  "", "| IXT checkpoint | seed | IXT loss (best feedback) | control's loss at the same step | "
                  "control's final loss | ratio vs control |", "|---|---:|---:|---:|---:|---:|"]
        for label, key in (("half budget", "half"), ("final", "final")):
            for row in heads_same[key]:
                ref = row["refs"].get("same")
                if not ref:
                    continue
                same_run = next(r for r in runs.values() if r["kind"] == "same" and r["seed"] == row["seed"])
                at_step = next((p["best"] for p in same_run["curve"] if p["iteration"] == row["iteration"]), None)
                lines.append(f"| {label} (step {row['iteration']}) | {row['seed']} | {row['ixt_loss']:.4f} | "
                             + (f"{at_step:.4f}" if at_step is not None else "n/a")
                             + f" | {ref['final_loss']:.4f} | {fmt_ratio(ref)} |")
        same_half = [r["refs"]["same"]["ratio"] for r in heads_same["half"] if "same" in r["refs"]]
        if same_half and all(v is not None for v in same_half):
            lines += ["", f"Ratio against the same-critique control at half the budget: {spread(same_half)}."]
    # -- curves table ---------------------------------------------------------------------
    lines += ["", "Held-out loss on good documents at every checkpoint (nats/token):", "",
              "| run | " + " | ".join(f"step {p['iteration']}" for p in next(iter(runs.values()))["curve"]) + " |"
              if runs else "", "|---|" + "---:|" * (len(next(iter(runs.values()))["curve"]) if runs else 0)]
    for name, run in sorted(runs.items()):
        keys = ["best", "none", "worst"] if run["kind"] == "ixt" else \
            [REFERENCES.get(run["kind"]) or SAME_CRITIQUE[run["kind"]]]
        for key in keys:
            lines.append(f"| {name} ({key}) | " + " | ".join(f"{p[key]:.4f}" if key in p else "" for p in run["curve"])
                         + " |")
    # -- task metric ----------------------------------------------------------------------
    lines += ["", "## Task metric: the critics judge sampled continuations", "",
              "Continuations of held-out good prose (first 8 words as the prompt, "
              f"{settings.get('gen_tokens', '?')} tokens, top-k 40, temperature 0.8), judged by the text critic "
              "without its two length rules; accepted = level 4-5 (score >= 6/10). Pooled over seeds; "
              "95 % Wilson intervals.", "", "| run | condition | accepted | share | 95 % CI |",
              "|---|---|---:|---:|---|"]
    for r in task:
        lines.append(f"| {KIND_LABELS.get(r['kind'], r['kind'])} | {r['condition']} | {r['accepted']}/{r['samples']} | "
                     f"{r['share']:.1%} | {r['ci95'][0]:.1%}-{r['ci95'][1]:.1%} |")
    # -- conditioning by flaw type --------------------------------------------------------
    if gaps:
        lines += ["", "## Conditioning gap by flaw type", "",
                  f"Loss of the same held-out text under the worst and the best feedback of its domain "
                  f"(critiques the critics wrote for training documents), {runs and 'seed ' + str(min(r['seed'] for r in runs.values()))}'s "
                  "IXT model, measured at PP=2 (tools/evaluate_conditioning.py). Positive gap: better feedback "
                  "makes the text more likely.", "",
                  "| documents | n | tokens | gap worst - best (nats/token) | best < worst | own - none |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in gaps:
            lines.append(f"| {r['group']} | {r['documents']} | {r['tokens']} | {r['gap']:+.4f} | "
                         f"{r['share_best_below_worst']:.0%} | {r['own_minus_none']:+.4f} |")
        lines += ["", "![gap by flaw type](plots/gap_by_flaw.png)"]
    # -- generations ----------------------------------------------------------------------
    ixt_runs = sorted((r for r in runs.values() if r["kind"] == "ixt"), key=lambda r: r["seed"])
    if ixt_runs and ixt_runs[0]["task"]:
        task0 = ixt_runs[0]["task"]
        best = task0.get(f"ixt_s{ixt_runs[0]['seed']}/best", {}).get("samples", [])
        worst = task0.get(f"ixt_s{ixt_runs[0]['seed']}/worst", {}).get("samples", [])
        lines += ["", "## Generations under the best and the worst feedback", "",
                  f"Seed {ixt_runs[0]['seed']}'s IXT model, same prompt and sampling seed; the prefix is the only "
                  "difference. The critic's verdict follows each sample.", ""]
        for b, w in list(zip(best, worst))[:4]:
            lines += [f"**Prompt**: `{b['prompt'].strip()}`", "",
                      f"- best feedback (score {b['score']:.1f}, {'accepted' if b['accepted'] else 'rejected'}): "
                      f"{b['output'].strip()[:400]!r}",
                      f"- worst feedback (score {w['score']:.1f}, {'accepted' if w['accepted'] else 'rejected'}): "
                      f"{w['output'].strip()[:400]!r}", ""]
    # -- data -----------------------------------------------------------------------------
    if levels:
        lines += ["## Data: the critics' levels by source and planted flaw", "",
                  "The builder plants flaws; the critics alone set every level.", "",
                  "| domain/variant | L1 | L2 | L3 | L4 | L5 |", "|---|---:|---:|---:|---:|---:|"]
        for r in levels:
            lines.append(f"| {r['group']} | " + " | ".join(map(str, r["levels"])) + " |")
    if stages:
        total = sum(s["seconds"] for s in stages)
        lines += ["", "## Stages and wall time", "", "| stage | seconds | result |", "|---|---:|---|"]
        lines += [f"| {s['stage']} | {s['seconds']:.1f} | {s.get('note', '')} |" for s in stages]
        lines += [f"| **total** | **{total:.0f}** | |"]
    lines += ["", "## Settings", "", "```", json.dumps(settings, indent=1), "```", ""]
    files[0].write_text("\n".join(lines), encoding="utf-8")
    files[1].write_text(json.dumps({"headline": summary, "ratio_rows_best": best_rows, "ratio_rows_none": none_rows,
                                    "ratio_rows_same": same_rows,
                                    "task": task, "gap_by_flaw": gaps, "critic_levels": levels}, indent=1) + "\n")
    print(headline)
    print(f"wrote {', '.join(str(f.relative_to(out)) for f in files)}")
    return files


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python examples/demo/report.py OUTPUT_DIR", file=sys.stderr)
        return 2
    write_report(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
