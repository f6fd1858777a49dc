"""Fault injection for the robustness tests: kill a rank at a named point of a checkpoint
save, or poison one rank's gradients. Inert unless ``MEGATRON_IXT_FAULT`` is set, e.g.

    MEGATRON_IXT_FAULT="kill-after-rename@4"      # SIGKILL rank 0 after publishing iter 4's folder
    MEGATRON_IXT_FAULT="nan-grad@3,nan-grad@4"    # NaN gradients on rank 0 at iterations 3 and 4
"""

from __future__ import annotations

import os
import signal

KILL_POINTS = ("kill-before-publish", "kill-after-aside", "kill-before-old-removed", "kill-after-rename",
               "kill-before-tracker")


def _armed() -> set[tuple[str, int]]:
    spec = os.environ.get("MEGATRON_IXT_FAULT", "")
    faults = set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        point, _, iteration = item.partition("@")
        faults.add((point, int(iteration)))
    return faults


def triggered(point: str, iteration: int, rank: int) -> bool:
    return rank == 0 and (point, iteration) in _armed()


def maybe_kill(point: str, iteration: int, rank: int) -> None:
    if triggered(point, iteration, rank):
        os.kill(os.getpid(), signal.SIGKILL)
