"""The feedback record every critic returns, and the quality levels derived from it.

The record follows the document contract in ``docs/DEVELOPING.md``::

    {"score": 7.5, "scale": [0, 10],
     "axes": {"writing_style": 7, "expertise": 8, ...},
     "critique": "Correct and idiomatic; no docstring.",
     "judge": "python-critic/1"}

Critics always write ``scale``. They write only the axes they can actually judge (a test
runner knows about correctness, not about writing style of prose), so ``axes`` may hold
fewer than the five standard axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

#: The five standard axes of the critique (ixt-method.md, "The feedback").
AXES: tuple[str, ...] = (
    "writing_style",
    "expertise",
    "educational_value",
    "factual_accuracy",
    "efficiency",
)

#: The score scale all critics in this package use.
SCALE: tuple[float, float] = (0.0, 10.0)


def clamp(value: float, low: float = SCALE[0], high: float = SCALE[1]) -> float:
    """``value`` limited to ``[low, high]``."""
    return max(low, min(high, value))


def quality_level(score: float, scale: tuple[float, float] = SCALE) -> int:
    """The contract's quality level 1..5 of ``score`` on ``scale``.

    ``level = 1 + min(4, floor(5 * (score - min) / (max - min)))``; scores outside the
    scale are clamped first so that a slightly out-of-range judge still maps to 1 or 5.
    (Level 0 means "not annotated" and is never returned here.)
    """
    low, high = scale
    if high <= low:
        raise ValueError(f"scale must be [min, max] with min < max, got {list(scale)}")
    score = clamp(score, low, high)
    # The contract's expression in the contract's order of operations, so that this and
    # megatron_ixt.data agree on boundary scores to the last bit.
    return 1 + min(4, math.floor(5 * (score - low) / (high - low)))


@dataclass
class Feedback:
    """One critic's verdict on one document.

    ``reasoning`` is the judge's private reasoning (thinking models only). It is *not*
    part of the training record: :meth:`to_record` leaves it out, and the annotation
    pipeline writes it to a separate audit file when asked to.
    """

    score: float
    critique: str
    judge: str
    axes: dict[str, float] = field(default_factory=dict)
    scale: tuple[float, float] = SCALE
    reasoning: str | None = None

    def __post_init__(self) -> None:
        low, high = self.scale
        if not (isinstance(self.score, (int, float)) and math.isfinite(self.score)):
            raise ValueError(f"feedback score must be a finite number, got {self.score!r}")
        if not low <= self.score <= high:
            raise ValueError(f"feedback score {self.score} outside scale {list(self.scale)}")
        for name, value in self.axes.items():
            if name not in AXES:
                raise ValueError(f"unknown axis {name!r}; the axes are {', '.join(AXES)}")
            if not low <= value <= high:
                raise ValueError(f"axis {name} = {value} outside scale {list(self.scale)}")

    @property
    def level(self) -> int:
        """Quality level 1..5 of this verdict."""
        return quality_level(self.score, self.scale)

    def to_record(self) -> dict[str, Any]:
        """The JSON object stored under a document's ``feedback`` key."""
        # Axes keep the standard order so that records diff cleanly.
        axes = {name: _round(self.axes[name]) for name in AXES if name in self.axes}
        record: dict[str, Any] = {
            "score": _round(self.score),
            "scale": [_round(self.scale[0]), _round(self.scale[1])],
        }
        if axes:
            record["axes"] = axes
        record["critique"] = self.critique
        record["judge"] = self.judge
        return record


def _round(value: float) -> float | int:
    """Two decimals, and integers written as integers (``10`` rather than ``10.0``)."""
    value = round(float(value), 2)
    return int(value) if value.is_integer() else value


def record_score(record: Mapping[str, Any]) -> tuple[float, tuple[float, float]] | None:
    """``(score, scale)`` of a stored feedback record, or None if it holds no usable score."""
    score = record.get("score")
    if not isinstance(score, (int, float)) or isinstance(score, bool):
        return None
    scale = record.get("scale") or SCALE
    return float(score), (float(scale[0]), float(scale[1]))
