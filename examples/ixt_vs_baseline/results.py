"""``results.md`` of the quality-vs-critique comparison, from ``<output-dir>/measurements``
(one JSON per run, as examples/ixt_vs_baseline/measure.py writes them).

    python examples/ixt_vs_baseline/results.py outputs/ixt_vs_baseline

The ratios are the demo's (examples/demo/report.py): tokens the better of the two
references (plain, plain + BOS) needs to reach IXT's held-out loss on good documents
under its best feedback, divided by IXT's tokens; read off measured curves, never
extrapolated.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demo"))

from report import (fmt_ratio, headline_points, load_runs, plot_curves, ratio_rows, spread,  # noqa: E402
                    task_table)

PREFIX_KINDS = {"ixt": "critique prefixes (critics' critiques, 48-token budget)",
                "ixtq": "quality-level prefixes (Quality: k/5)"}


def write_results(out: Path, train_iters: int) -> str:
    out = Path(out)
    runs = load_runs(out)
    lines = ["# Quality-level and critique prefixes against the better reference", "",
             "Ratio = tokens the better of plain / plain + BOS needs to reach IXT's held-out loss on good documents "
             "(IXT under its best feedback) / IXT's tokens. \"> x\": never reached within the budget (no "
             "extrapolation).", "",
             "| prefix | checkpoint | seed | IXT loss (best) | IXT loss (no prefix) | vs plain | vs plain + BOS | "
             "ratio vs better |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    summary = {}
    for kind, label in PREFIX_KINDS.items():
        rows = ratio_rows(runs, "best", ixt_kind=kind)
        heads = headline_points(rows, train_iters)
        none_loss = {(r["seed"], p["iteration"]): p["none"] for r in runs.values() if r["kind"] == kind
                     for p in r["curve"]}
        for which in ("half", "final"):
            ratios = []
            for row in heads[which]:
                refs = row["refs"]
                better = refs[row["better"]] if row["better"] else None  # None: neither reached
                ratios.append(better["ratio"] if better else None)
                lines.append(f"| {label} | {which} (step {row['iteration']}) | {row['seed']} | {row['ixt_loss']:.4f} | "
                             f"{none_loss[(row['seed'], row['iteration'])]:.4f} | {fmt_ratio(refs['plain'])} | "
                             f"{fmt_ratio(refs['bos'])} | {fmt_ratio(better) if better else 'n/a'} |")
            measured = [r for r in ratios if r is not None]
            summary[f"{kind}/{which}"] = {"ratios": ratios, "text": spread(measured) if measured else "not measured"}
    lines += ["", "Spread over seeds (ratio vs the better reference, where measured):", ""]
    lines += [f"- {PREFIX_KINDS[key.split('/')[0]]}, {key.split('/')[1]}: {v['text']}"
              + ("" if None not in v["ratios"] else " (not reached on some seeds: see the table)")
              for key, v in summary.items()]
    lines += ["", "![loss vs tokens](loss_vs_tokens.png)", "",
              "## Task metric (critics' verdicts on sampled continuations, pooled over seeds)", "",
              "| run | condition | accepted | share | 95 % CI |", "|---|---|---:|---:|---|"]
    for r in task_table(runs):
        lines.append(f"| {r['kind']} | {r['condition']} | {r['accepted']}/{r['samples']} | {r['share']:.1%} | "
                     f"{r['ci95'][0]:.1%}-{r['ci95'][1]:.1%} |")
    plot_curves(runs, out / "loss_vs_tokens.png",
                extra_styles={("ixtq", "best"): ("tab:green", "IXT quality levels, best (5/5)")})
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"summary": summary}, indent=1) + "\n")
    return "; ".join(f"{k}: {v['text']}" for k, v in summary.items())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python examples/ixt_vs_baseline/results.py OUTPUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    measurements = sorted((out / "measurements").glob("*.json"))
    iters = max(p["iteration"] for m in measurements for c in json.loads(m.read_text())["curves"].values() for p in c)
    print(write_results(out, iters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
