"""Warnings are not filtered wholesale (issue 14): the run logs and the test suite silence
only megatron-core's named import-time notices of missing optional kernels (Transformer
Engine, Apex); any other warning - a run-time "Falling back to ...", a deprecation - shows."""

from __future__ import annotations

import subprocess
import sys
import warnings

from tests.launch import REPO, child_env

TE_NOTICE = "Transformer Engine and Apex are not installed. Falling back to Torch optimizers."

# What a training process does first (pretrain_ixt.py), then warnings of three kinds.
PROBE = f"""
import warnings
from megatron_ixt.runtime.logs import setup_logging
setup_logging()
warnings.warn("Falling back to a slow path at run time", UserWarning)
warnings.warn("an unrelated user warning", UserWarning)
warnings.warn_explicit({TE_NOTICE!r}, UserWarning, "optimizer.py", 1, module="megatron.core.optimizer")
print("probe done", flush=True)
"""


def test_run_logs_show_every_warning_but_megatron_cores_named_notices():
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "probe done" in output, output
    assert "Falling back to a slow path at run time" in output, output
    assert "an unrelated user warning" in output, output
    assert "Transformer Engine and Apex are not installed" not in output, output


def test_the_suite_shows_warnings_other_than_the_named_notices():
    # pytest applies pytest.ini's filterwarnings around each test, so they are in force here;
    # record=True keeps them (it only captures what gets through).
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn("Falling back to a slow path at run time", UserWarning)
        warnings.warn("a deprecated call", DeprecationWarning)
        warnings.warn_explicit(TE_NOTICE, UserWarning, "optimizer.py", 1, module="megatron.core.optimizer")
    assert [str(w.message) for w in seen] == ["Falling back to a slow path at run time", "a deprecated call"]
