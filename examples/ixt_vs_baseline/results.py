"""The comparison's table, compute-efficiency ratios and plot, from ``measurements.json``.

A ratio asks: how many tokens does a reference run need to reach the held-out loss that
IXT reaches at the end of its budget? It is read off the reference's loss-vs-tokens curve
by linear interpolation between its checkpoints, and divided by IXT's tokens. Above 1: IXT
is more compute-efficient; "not reached" means the reference's curve never gets that low
within the budget (the ratio is then only known to exceed the budget's 1x, and no
extrapolation is attempted).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

CURVES = {("baseline", "none"): ("o-k", "baseline (plain next-token)"),
          ("control", "none"): ("d:C1", "control (constant prefix), no prefix"),
          ("ixt", "none"): ("s--C0", "IXT, no prefix"),
          ("ixt", "best"): ("^-C2", "IXT, best prefix (5/5)")}


def tokens_to_reach(curve: list[dict], key: str, target: float) -> Optional[float]:
    """First token count at which ``curve[key]`` falls to ``target`` (linear between points;
    None if it never does). Before the first checkpoint the loss is unknown, so a target
    already met there is credited to the first checkpoint."""
    previous = None
    for point in curve:
        if point[key] <= target:
            if previous is None:
                return float(point["tokens"])
            (t0, l0), (t1, l1) = (previous["tokens"], previous[key]), (point["tokens"], point[key])
            return t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
        previous = point
    return None


def efficiency(ixt: list[dict], reference: list[dict], ixt_key: str) -> dict:
    target = ixt[-1][ixt_key]
    needed = tokens_to_reach(reference, "none", target)
    return {"ixt_condition": ixt_key, "ixt_final_loss": target, "ixt_tokens": ixt[-1]["tokens"],
            "reference_tokens_needed": needed,
            "ratio": needed / ixt[-1]["tokens"] if needed is not None else None}


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (name, key), (style, label) in CURVES.items():
        pts = curves.get(name, [])
        if pts and key in pts[0]:
            ax.plot([p["tokens"] / 1e6 for p in pts], [p[key] for p in pts], style, label=label)
    ax.set_xlabel("training tokens seen (millions)")
    ax.set_ylabel("held-out text loss, level 4-5 docs (nats/token)")
    ax.set_title("IXT vs plain next-token training, same data and budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ratio_text(e: dict) -> str:
    if e["ratio"] is None:
        return "not reached within the budget (ratio > 1)"
    return f"{e['ratio']:.2f}x ({e['reference_tokens_needed'] / 1e6:.2f}M / {e['ixt_tokens'] / 1e6:.2f}M tokens)"


def _task_rows(task: dict) -> list[str]:
    rows = ["| model, condition | prose accepted (text critic) | prose mean score | "
            "code accepted (python critic) | code mean score |", "|---|---:|---:|---:|---:|"]
    for name, t in task.items():
        cells = []
        for kind in ("prose", "code"):
            r = t["by_kind"].get(kind)
            cells += [f"{r['accepted']}/{r['samples']} ({100 * r['share_accepted']:.0f}%)", f"{r['mean_score']:.2f}"] \
                if r else ["n/a", "n/a"]
        rows.append(f"| {name.replace('/', ', ')} | " + " | ".join(cells) + " |")
    return rows


def loss_table(curves: dict) -> list[str]:
    columns = [(name, key) for name, key in CURVES if name in curves and key in curves[name][0]]
    columns += [(name, key) for name, key in (("control", "constant"),) if name in curves]
    head = {("control", "constant"): "control, its prefix (3/5)"}
    lines = ["| step | tokens seen | " + " | ".join(head.get(c) or CURVES[c][1] for c in columns) + " |",
             "|---:|---:|" + "---:|" * len(columns)]
    by_iter = {name: {p["iteration"]: p for p in pts} for name, pts in curves.items()}
    for p in curves["ixt"]:
        cells = [by_iter[name].get(p["iteration"], {}).get(key, math.nan) for name, key in columns]
        lines.append(f"| {p['iteration']} | {p['tokens'] / 1e6:.2f}M | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
    return lines


def ratios_along(ixt: list[dict], reference: list[dict], ixt_key: str) -> list[Optional[float]]:
    """The ratio at every IXT checkpoint, not only the last: with a short budget the
    reference may never reach IXT's *final* loss, but still reach its earlier ones."""
    return [efficiency(ixt[:i + 1], reference, ixt_key)["ratio"] for i in range(len(ixt))]


def ratios_table(curves: dict) -> list[str]:
    pairs = [("baseline", "none", "baseline -> IXT, no prefix"), ("baseline", "best", "baseline -> IXT, best prefix")]
    if "control" in curves:
        pairs.append(("control", "none", "control -> IXT, no prefix"))
    columns = [ratios_along(curves["ixt"], curves[ref], key) for ref, key, _ in pairs]
    lines = ["| IXT at step | tokens | " + " | ".join(title for _, _, title in pairs) + " |",
             "|---:|---:|" + "---:|" * len(pairs)]
    for i, p in enumerate(curves["ixt"]):
        cells = [f"{col[i]:.2f}x" if col[i] is not None else "not reached" for col in columns]
        lines.append(f"| {p['iteration']} | {p['tokens'] / 1e6:.2f}M | " + " | ".join(cells) + " |")
    return lines


def write_results(out: Path) -> str:
    m = json.loads((out / "measurements.json").read_text())
    curves, task = m["curves"], m["task"]
    steps = curves["ixt"][-1]["iteration"]
    meta = {n: json.loads((out / "data" / f"{n}_text_document.meta.json").read_text())["counts"] for n in curves}
    ratios = {"baseline_to_ixt_no_prefix": efficiency(curves["ixt"], curves["baseline"], "none"),
              "baseline_to_ixt_best_prefix": efficiency(curves["ixt"], curves["baseline"], "best")}
    if "control" in curves:
        ratios["control_to_ixt_no_prefix"] = efficiency(curves["ixt"], curves["control"], "none")
        ratios["baseline_to_control_no_prefix"] = efficiency(curves["control"], curves["baseline"], "none")
    plot(curves, out / "loss_vs_tokens.png")
    stages = json.loads((out / "stages.json").read_text()) if (out / "stages.json").exists() else []
    prefix_share = meta["ixt"]["prefix_tokens"] / meta["ixt"]["tokens"]

    md = ["## Results", "",
          f"{m['documents']} held-out documents of level 4-5 ({m['text_tokens']:,} text tokens), never trained "
          f"on. Every run: {steps} steps of {m['tokens_per_step']:,} tokens, seed 1234, the same "
          f"tokenizer, documents and flags. IXT's sequences spend {100 * prefix_share:.1f}% of their tokens on "
          f"prefixes ({meta['ixt']['prefix_tokens']:,} of {meta['ixt']['tokens']:,}); the baseline has none. "
          "Held-out text loss (nats/token, lower is better; the same tokens in every column):", "",
          *loss_table(curves), "",
          "Compute-efficiency ratios (tokens a reference run needs to reach IXT's final held-out loss / IXT's "
          "tokens):", "",
          f"- **baseline -> IXT without a prefix** (the fair comparison: both read the same input): "
          f"{ratio_text(ratios['baseline_to_ixt_no_prefix'])}",
          "- baseline -> IXT under the best prefix (how IXT is used; the prefix also tells the model these "
          "documents are good, which the baseline cannot be told): "
          f"{ratio_text(ratios['baseline_to_ixt_best_prefix'])}"]
    if "control" in curves:
        md += [f"- baseline -> control without a prefix (what a constant prefix at every document start does "
               f"by itself): {ratio_text(ratios['baseline_to_control_no_prefix'])}",
               f"- **control -> IXT without a prefix** (what the *information* in the feedback adds): "
               f"{ratio_text(ratios['control_to_ixt_no_prefix'])}"]
    md += ["", "The same ratios at every IXT checkpoint (the loss IXT has at that point, and the tokens the "
           "reference needs for it):", "", *ratios_table(curves),
           "", "![loss vs tokens](loss_vs_tokens.png)", ""]
    if task:
        md += ["Task metric at the final checkpoints: one continuation (64 tokens, top-k 40, temperature 0.8) per "
               "held-out prompt (prose: the first 8 words of a level 4-5 document; code: a top-level `def`/`class` "
               "line), judged by the project's critics (the text critic without its two length rules, since we "
               "chose the length; code up to its last complete line, as a fragment); *accepted* = score >= 6/10.",
               "", *_task_rows(task), ""]
    if stages:
        md += ["Wall time: " + ", ".join(f"{s['stage']} {s['seconds']:.0f} s" for s in stages)
               + f"; total {sum(s['seconds'] for s in stages) / 60:.1f} min.", ""]
    (out / "results.md").write_text("\n".join(md))
    (out / "results.json").write_text(json.dumps({"curves": curves, "efficiency": ratios, "task": task,
                                                  "prefix_token_share": prefix_share}, indent=1) + "\n")
    fair = ratios["baseline_to_ixt_no_prefix"]
    return "compute-efficiency ratio (no prefix): " + (f"{fair['ratio']:.2f}x" if fair["ratio"] else "not reached")


if __name__ == "__main__":  # re-render from an output folder: python results.py outputs/ixt_vs_baseline
    import sys

    print(write_results(Path(sys.argv[1])))
