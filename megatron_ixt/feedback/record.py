"""The feedback record every critic returns, and the quality levels derived from it.

The record is the document format's ``feedback`` object (``docs/DEVELOPING.md``)::

    {"score": 7.5, "scale": [0, 10],
     "axes": {"writing_style": 7, "expertise": 8, ...},
     "critique": "Correct and idiomatic; no docstring.",
     "judge": "python-critic/1"}

The format belongs to ``megatron_ixt.format``: ``Feedback`` (``format/document.py``) and
``quality_level`` (``format/levels.py``) are defined there once and imported here, so that a
critic's verdict and what the preprocessing tool reads are the same object with the same
checks. Critics always write ``scale``. They write only the axes they can actually judge (a
test runner knows about correctness, not about the writing style of prose), so ``axes`` may
hold fewer than the five standard axes.
"""

from __future__ import annotations

from typing import Any, Mapping

from megatron_ixt.format.document import DEFAULT_SCORE_SCALE, STANDARD_AXES, Feedback
from megatron_ixt.format.levels import quality_level

#: The five standard axes of the critique (ixt-method.md, "The feedback").
AXES: tuple[str, ...] = STANDARD_AXES

#: The score scale all critics in this package use.
SCALE: tuple[float, float] = DEFAULT_SCORE_SCALE

__all__ = ["AXES", "SCALE", "Feedback", "clamp", "quality_level", "record_score"]


def clamp(value: float, low: float = SCALE[0], high: float = SCALE[1]) -> float:
    """``value`` limited to ``[low, high]``: for a critic's raw score, before its ``Feedback``."""
    return max(low, min(high, value))


def record_score(record: Mapping[str, Any]) -> tuple[float, tuple[float, float]] | None:
    """``(score, scale)`` of a stored feedback record, or None if it holds no usable score."""
    score = record.get("score")
    if not isinstance(score, (int, float)) or isinstance(score, bool):
        return None
    scale = record.get("scale") or SCALE
    return float(score), (float(scale[0]), float(scale[1]))
