"""A pytest plugin for benchmarks/gpu_check.py: one ``RESULT {json}`` line per finished test
on the real stdout (not pytest's capture), so that each outcome reaches the results file the
moment it is known, before a deadline or a kill can lose it."""

from __future__ import annotations

import json
import sys


def pytest_runtest_logreport(report) -> None:
    # One line per test: its call, or the setup/teardown that failed or skipped it.
    if report.when != "call" and report.outcome == "passed":
        return
    name = report.nodeid.split("::", 1)[-1]
    status = {"passed": "passed", "failed": "FAILED", "skipped": "skipped"}[report.outcome]
    if report.when != "call":
        status += f" ({report.when})"
    sys.__stdout__.write("RESULT " + json.dumps({"item": name, "status": status,
                                                  "seconds": round(report.duration, 2)}) + "\n")
    sys.__stdout__.flush()
