"""results.md and results.json of examples/cpt_smollm2/run.py, from its measurements.

    .venv/bin/python examples/cpt_smollm2/results.py outputs/cpt_smollm2

The conditioning gap is the held-out loss (nats per text token, good documents) under the
worst feedback minus under the best; the verdicts are the critics' accepted share (score
>= 6/10) of sampled continuations, with Wilson 95% intervals, pooled over prompts (and over
seeds for the "after" row).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from megatron_ixt.evaluation.stats import wilson  # noqa: E402


def _final(measurement: dict) -> dict:
    return next(iter(measurement["curves"].values()))[-1]


def _verdicts(measurements: list[dict], condition: str) -> tuple[int, int]:
    accepted = samples = 0
    for m in measurements:
        for key, task in m["task"].items():
            if key.endswith("/" + condition):
                for r in task["by_kind"].values():
                    accepted += r["accepted"]
                    samples += r["samples"]
    return accepted, samples


def _steps(metrics: Path) -> list[dict]:
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []


def write_results(out: Path, train_iters: int, tokens_per_step: int) -> str:
    out = Path(out)
    before = json.loads((out / "measurements" / "before.json").read_text())
    seeds = sorted(p for p in (out / "measurements").glob("ixt_seed*.json"))
    after = {p.stem: json.loads(p.read_text()) for p in seeds}
    timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}

    def gap(m):
        point = _final(m)
        return point["worst"] - point["best"]

    rows = [("before (import)", _final(before), gap(before))] + [(f"after, {k}", _final(m), gap(m)) for k, m in after.items()]
    gaps_after = [gap(m) for m in after.values()]
    mean_after = sum(gaps_after) / len(gaps_after) if gaps_after else float("nan")
    spread = (max(gaps_after) - min(gaps_after)) / 2 if gaps_after else float("nan")
    lines = ["# IXT continued pretraining of SmolLM2-135M-Instruct (CPU)", "",
             f"{len(after)} seeds x {train_iters} steps of {tokens_per_step} tokens "
             f"({train_iters * tokens_per_step:,} tokens per seed); {before['documents']} held-out good documents, "
             f"{before['text_tokens']:,} text tokens scored per condition.", "",
             "## Held-out loss of good documents (nats per text token)", "",
             "| model | no feedback | best feedback | worst feedback | gap (worst - best) |", "|---|---:|---:|---:|---:|"]
    for name, point, g in rows:
        lines.append(f"| {name} | {point['none']:.4f} | {point['best']:.4f} | {point['worst']:.4f} | {g:+.4f} |")
    lines += ["", f"Gap after: {mean_after:+.4f} mean over seeds, +/- {spread:.4f} (half the range of "
              f"{len(gaps_after)} seeds); before: {gap(before):+.4f}.", "",
              "## Critics' verdicts on sampled continuations (accepted: score >= 6/10)", "",
              "| model | under | accepted | share | 95% interval |", "|---|---|---:|---:|---|"]
    verdicts = {}
    for name, ms in (("before (import)", [before]), ("after (seeds pooled)", list(after.values()))):
        for cond in ("best", "worst"):
            a, n = _verdicts(ms, cond)
            lo, hi = wilson(a, n)
            verdicts[f"{name}/{cond}"] = {"accepted": a, "samples": n, "interval": [lo, hi]}
            lines.append(f"| {name} | {cond} feedback | {a}/{n} | {a / max(n, 1):.3f} | [{lo:.3f}, {hi:.3f}] |")
    per_iteration = {}
    for k in after:
        train = timings.get(f"train_{k}")
        rows_ = _steps(out / "logs" / f"{k}.metrics.jsonl")
        losses = [r["lm loss"] for r in rows_ if "lm loss" in r and "split" not in r]
        per_iteration[k] = {"wall_s": train, "s_per_iteration_incl_startup": train / train_iters if train else None,
                            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}
    lines += ["", "## Cost", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    for k, v in per_iteration.items():
        if v["wall_s"]:
            lines.append(f"\n{k}: {v['s_per_iteration_incl_startup']:.2f} s/iteration (training wall time incl. "
                         f"start-up / steps); lm loss {v['first_loss']:.3f} (first logged) -> {v['last_loss']:.3f}")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"gap_before": gap(before), "gap_after": gaps_after,
                                                  "rows": [(n, p) for n, p, _ in rows], "verdicts": verdicts,
                                                  "training": per_iteration, "timings": timings}, indent=1))
    return text


if __name__ == "__main__":
    out = Path(sys.argv[1])
    timings = json.loads((out / "timings.json").read_text())
    iters = next((json.loads(l).get("iteration") for l in reversed(
        (next(out.glob("logs/ixt_seed*.metrics.jsonl"))).read_text().splitlines()) if l.strip()), 0)
    print(write_results(out, iters, 1024))
