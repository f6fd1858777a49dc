"""Activation recomputation (--recompute-granularity, --recompute-method, --recompute-num-layers,
megatron-core's TransformerConfig): the same loss and gradients as without it, dropout
included (recomputation replays the RNG), and fewer bytes saved for the backward pass, counted
with torch.autograd.graph.saved_tensors_hooks (tests/scripts/recompute_probe.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.launch import run_python


def test_recomputation_gives_the_same_gradients_from_fewer_saved_bytes(tmp_path):
    out = tmp_path / "recompute.json"
    proc = run_python("tests/scripts/recompute_probe.py", [out], timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())
    base = results["none"]
    for name, r in results.items():
        print(f"{name:13} loss {r['loss']:.6f} grad norm {r['grad_norm']:.6f} saved {r['saved_bytes'] / 2**20:.2f} MiB")
        assert r["loss"] == pytest.approx(base["loss"], abs=1e-6), name
        np.testing.assert_allclose(r["grads"], base["grads"], rtol=1e-5, atol=1e-7, err_msg=name)
    assert results["full-uniform"]["saved_bytes"] < results["full-block"]["saved_bytes"] < base["saved_bytes"]
    assert results["selective"]["saved_bytes"] < base["saved_bytes"]


@pytest.mark.parametrize("flags, message", [
    (["--recompute-method", "uniform"], "--recompute-method and --recompute-num-layers need --recompute-granularity full"),
    (["--recompute-granularity", "full"], "--recompute-granularity full needs --recompute-method uniform|block"),
    (["--recompute-granularity", "selective", "--recompute-num-layers", 1], "drop --recompute-method and"),
    (["--recompute-granularity", "full", "--recompute-method", "block", "--recompute-num-layers", 5],
     r"--recompute-num-layers \(5\) must be between 1 and the layers per pipeline stage \(4\)"),
])
def test_recomputation_flags_are_checked_in_one_line(flags, message):
    from megatron_ixt.config.cli import ConfigError, parse_config
    from megatron_ixt.config.validate import check_layout

    cfg, _ = parse_config(["--config", "examples/configs/tiny.yaml", "--mock-data", *map(str, flags)])
    with pytest.raises(ConfigError, match=message):
        check_layout(cfg)
