"""The end-of-run summary of an annotation run (the progress display is `runtime.progress.Progress`)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping

from megatron_ixt.runtime.progress import format_duration
from megatron_ixt.feedback.record import quality_level, record_score

#: What happened to a document in a run.
OUTCOMES = ("annotated", "kept", "unselected", "not_applicable", "error", "resumed")


@dataclass
class Summary:
    """Counts and distributions over the whole output file (resumed documents included)."""

    outcomes: Counter = field(default_factory=Counter)
    levels: Counter = field(default_factory=Counter)
    score_bins: Counter = field(default_factory=Counter)  # bin b holds scores in [b, b+1) of 10
    by_domain: dict[str, dict[str, Any]] = field(default_factory=lambda: defaultdict(
        lambda: {"documents": 0, "annotated": 0, "score_sum": 0.0, "levels": Counter()}))
    elapsed_s: float = 0.0
    judged_in_run: int = 0

    def add(self, doc: Mapping[str, Any], outcome: str) -> None:
        """Count one output document."""
        self.outcomes[outcome] += 1
        domain = self.by_domain[str(doc.get("domain") or "none")]
        domain["documents"] += 1
        feedback = doc.get("feedback")
        scored = record_score(feedback) if isinstance(feedback, Mapping) else None
        if scored is None:
            self.levels[0] += 1
            domain["levels"][0] += 1
            return
        score, scale = scored
        level = quality_level(score, scale)
        self.levels[level] += 1
        # Bins on a 0-10 view of the score, whatever the record's scale.
        fraction = (min(max(score, scale[0]), scale[1]) - scale[0]) / (scale[1] - scale[0])
        self.score_bins[min(9, int(fraction * 10))] += 1
        domain["annotated"] += 1
        domain["score_sum"] += fraction * 10
        domain["levels"][level] += 1

    @property
    def documents(self) -> int:
        return sum(self.outcomes.values())

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for ``--summary-json`` and tests)."""
        return {
            "documents": self.documents,
            "outcomes": dict(self.outcomes),
            "levels": {str(k): self.levels[k] for k in sorted(self.levels)},
            "score_histogram": {f"{b}-{b + 1}": self.score_bins[b] for b in range(10)},
            "by_domain": {name: {"documents": d["documents"], "annotated": d["annotated"],
                                 "mean_score": round(d["score_sum"] / d["annotated"], 2) if d["annotated"] else None,
                                 "levels": {str(k): d["levels"][k] for k in sorted(d["levels"])}}
                          for name, d in sorted(self.by_domain.items())},
            "elapsed_s": round(self.elapsed_s, 2),
            "judged_docs_per_s": round(self.judged_in_run / self.elapsed_s, 2) if self.elapsed_s else None,
        }

    def format(self) -> str:
        """A human-readable report."""
        data = self.as_dict()
        lines = [f"documents in output: {data['documents']}  ("
                 + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())) + ")"]
        if data["judged_docs_per_s"] is not None:
            lines.append(f"judged {self.judged_in_run} documents in {format_duration(self.elapsed_s)} "
                         f"({data['judged_docs_per_s']} docs/s)")
        annotated = sum(v for k, v in self.levels.items() if k)
        lines.append("quality levels (0 = no feedback):")
        peak = max(self.levels.values(), default=1) or 1
        for level in range(6):
            count = self.levels[level]
            lines.append(f"  {level}: {count:7d}  {'#' * round(30 * count / peak)}")
        if annotated:
            lines.append("scores (0-10):")
            peak = max(self.score_bins.values()) or 1
            for b in range(10):
                count = self.score_bins[b]
                lines.append(f"  {b:2d}-{b + 1:<2d} {count:7d}  {'#' * round(30 * count / peak)}")
        lines.append("by domain:      docs  annotated  mean score  levels 1/2/3/4/5")
        for name, d in data["by_domain"].items():
            levels = "/".join(str(d["levels"].get(str(k), 0)) for k in range(1, 6))
            mean = f"{d['mean_score']:.2f}" if d["mean_score"] is not None else "-"
            lines.append(f"  {name:12s} {d['documents']:6d} {d['annotated']:10d} {mean:>11s}  {levels}")
        return "\n".join(lines)
