"""Quality levels: a judge's score quantized into 5 levels (0 = not annotated).

Two ways to draw the level boundaries (`--quality-thresholds`):

* `fixed` (the contract in docs/DEVELOPING.md): the scale is cut into fifths,
  `level = 1 + min(4, floor(5 * (score - min) / (max - min)))`.
* `quantile`: a first pass over the corpus computes the 20/40/60/80 % quantiles of the
  normalized scores, so that each level holds about a fifth of the annotated documents.
  Judges rarely use their whole scale, and with fixed fifths most documents can land in
  one or two levels; quantiles spread them. The cut points are stored in the `.meta.json`
  so that the same levels can be recomputed later.
* `given`: four cut points on the normalized score, written out (`0.3,0.5,0.7,0.9`): levels
  that must not move with the corpus, e.g. the online stage's later rounds, cut where its
  first round was (`tools/online_ixt.py`).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # imported where used: tools' --help imports this module through prefixes
    import numpy as np

NUM_LEVELS = 5
"""Levels run from 1 (worst) to 5 (best)."""

NOT_ANNOTATED = 0
"""The level recorded for a document without feedback."""

FIXED_CUT_POINTS = (0.2, 0.4, 0.6, 0.8)
"""Normalized-score boundaries of the fixed fifths."""


def normalize_score(score: float, scale: Sequence[float]) -> float:
    """Map `score` from `[min, max]` onto `[0, 1]`."""
    low, high = scale
    return (score - low) / (high - low)


def quality_level(score: float, scale: Sequence[float] = (0, 10)) -> int:
    """The fixed-threshold quality level 1..5 of `score` on `scale` (DEVELOPING.md formula).

    The one definition in the project (critics, evaluation and the data tools use it). A
    score outside its scale raises `ValueError`: it is a broken record, not a level. A critic
    that computes a raw score beyond its scale clamps it itself (`feedback.record.clamp`)
    before building its `Feedback`, where the choice is visible.
    """
    low, high = scale
    if not low < high:
        raise ValueError(f"scale must be [min, max] with min < max, got {list(scale)}")
    if not low <= score <= high:
        raise ValueError(f"score {score} is outside its scale [{low}, {high}]")
    # Exactly the contract's expression, evaluated in the same order, so that every package
    # that computes a level gets the same answer at the boundaries.
    return 1 + min(NUM_LEVELS - 1, math.floor(NUM_LEVELS * (score - low) / (high - low)))


@dataclass(frozen=True)
class QualityThresholds:
    """How scores become levels: `fixed` fifths, corpus `quantile` cut points, or `given` ones.

    `cut_points` are 4 increasing boundaries on the normalized score; a score at or above
    the k-th boundary gets at least level k + 1.
    """

    mode: str = "fixed"
    cut_points: tuple[float, ...] = FIXED_CUT_POINTS

    def __post_init__(self):
        if self.mode not in ("fixed", "quantile", "given"):
            raise ValueError(f"quality thresholds must be 'fixed', 'quantile' or 'given', got {self.mode!r}")
        if len(self.cut_points) != NUM_LEVELS - 1 or list(self.cut_points) != sorted(self.cut_points):
            raise ValueError(f"expected {NUM_LEVELS - 1} increasing cut points, got {self.cut_points}")

    @classmethod
    def fixed(cls) -> "QualityThresholds":
        return cls("fixed", FIXED_CUT_POINTS)

    @classmethod
    def parse(cls, text: str) -> "QualityThresholds":
        """`fixed`, or four increasing comma-separated cut points (`given`); `quantile` is
        computed from a corpus (`from_scores`), not parsed. Raises ValueError."""
        if text == "fixed":
            return cls.fixed()
        try:
            cuts = tuple(float(c) for c in text.split(","))
        except ValueError:
            cuts = ()
        if len(cuts) != NUM_LEVELS - 1 or list(cuts) != sorted(cuts) or not all(0 <= c <= 1 for c in cuts):
            raise ValueError(f"expected fixed, quantile or {NUM_LEVELS - 1} increasing cut points in [0, 1] "
                             f"(normalized scores) such as 0.3,0.5,0.7,0.9, got {text!r}")
        return cls("given", cuts)

    @classmethod
    def from_scores(cls, normalized_scores: Iterable[float] | np.ndarray) -> "QualityThresholds":
        """Quantile thresholds from the normalized scores of a corpus (the first pass)."""
        import numpy as np

        scores = np.asarray(normalized_scores, dtype=np.float64)
        if scores.size == 0:
            # Nothing is annotated: any thresholds give the same (empty) result.
            return cls("quantile", FIXED_CUT_POINTS)
        cuts = np.quantile(scores, [0.2, 0.4, 0.6, 0.8])
        return cls("quantile", tuple(float(c) for c in cuts))

    def level(self, score: float, scale: Sequence[float] = (0, 10)) -> int:
        """The level 1..5 of `score` on `scale`."""
        if self.mode == "fixed":
            return quality_level(score, scale)
        position = bisect.bisect_right(self.cut_points, normalize_score(score, scale))
        return 1 + min(NUM_LEVELS - 1, position)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "cut_points": list(self.cut_points)}

    @classmethod
    def from_dict(cls, obj: dict) -> "QualityThresholds":
        return cls(obj["mode"], tuple(obj["cut_points"]))
