"""Launch environments (torchrun, SLURM, single process) and the CPU compatibility layer:
active on CPU only, invisible outside megatron-core, and never touched on CUDA."""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from tests.launch import REPO, TINY, read_metrics, run_torchrun
from megatron_ixt.runtime import cpu_compat, distributed
from megatron_ixt.runtime.distributed import ParallelLayout, first_slurm_host, resolve_launch_env


@pytest.mark.parametrize("nodelist, host", [("node07", "node07"), ("gpu[03-05,09]", "gpu03"),
                                            ("a[1,3],b2", "a1"), ("dgx-[012-015]", "dgx-012")])
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


def test_launch_env_from_slurm():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[03-04]",
           "SLURM_JOB_ID": "12345"}
    info = resolve_launch_env(env)
    assert info == {"source": "slurm", "rank": 5, "world_size": 8, "local_rank": 1}
    assert env["MASTER_ADDR"] == "gpu03" and env["MASTER_PORT"] == str(20000 + 12345 % 20000)


def test_launch_env_prefers_torchrun_and_defaults_to_single():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    assert resolve_launch_env(env)["source"] == "torchrun"
    env = {}
    assert resolve_launch_env(env) == {"source": "single", "rank": 0, "world_size": 1, "local_rank": 0}
    # No port chosen ahead: initialize_distributed binds the store to one the kernel picks.
    assert env["MASTER_ADDR"] == "127.0.0.1" and "MASTER_PORT" not in env


def test_layout_matches_megatron_rank_order():
    from megatron.core.parallel_state import RankGenerator

    layout = ParallelLayout(world_size=8, tp=2, pp=2)
    gen = RankGenerator(tp=2, ep=1, dp=2, pp=2, cp=1, order="tp-cp-ep-dp-pp")
    for kind in ("tp", "dp", "pp"):
        for group in gen.get_ranks(kind):
            coords = [layout.coordinates(r) for r in group]
            others = [k for k in ("tp", "dp", "pp") if k != kind]
            assert len({tuple(c[o] for o in others) for c in coords}) == 1  # same coordinates but one
            assert sorted(c[kind] for c in coords) == list(range(len(group)))


def test_layout_stage_predicates_and_checkpoint_record():
    """Rank 5 of TP 2 x PP 2 x DP 2 with two virtual stages per rank: the last pipeline
    stage (pp rank 1), whose second chunk only is the last of the whole pipeline."""
    layout = ParallelLayout(world_size=8, tp=2, pp=2, vpp=2, rank=5, tp_rank=1, pp_rank=1, dp_rank=0)
    assert layout.coordinates(5) == {"rank": 5, "tp": 1, "cp": 0, "pp": 1, "dp": 0}
    assert layout.num_chunks == 2 and layout.dp == 2
    assert not layout.is_first_stage() and layout.is_last_stage()
    assert [layout.is_last_stage(k) for k in range(2)] == [False, True]
    assert not any(layout.is_first_stage(k) for k in range(2))
    first = dataclasses.replace(layout, rank=1, pp_rank=0)
    assert [first.is_first_stage(k) for k in range(2)] == [True, False]
    assert layout.num_microbatches(global_batch_size=16, micro_batch_size=2) == 4
    assert layout.checkpoint_record() == {"tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 2,
                                          "data_parallel_size": 2}
    assert layout.rank_grid() == ((2, 2, 2), (1, 1, 0))


def test_layout_from_a_one_process_world():
    """Read from megatron-core's groups in a one-process gloo world (in a subprocess: a fresh
    process, whatever other tests left initialised)."""
    code = """
import torch
from megatron.core import parallel_state
from megatron_ixt.runtime import cpu_compat
from megatron_ixt.runtime.distributed import ParallelLayout
torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
cpu_compat.activate()
parallel_state.initialize_model_parallel(1, 1)
layout = ParallelLayout.from_megatron()
assert layout == ParallelLayout(world_size=1, tp=1, pp=1), layout
assert layout.tp_group is parallel_state.get_tensor_model_parallel_group()
assert layout.dp_group is parallel_state.get_data_parallel_group(with_context_parallel=True)
assert layout.is_first_stage() and layout.is_last_stage() and layout.num_chunks == 1
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_cpu_compat_refuses_cuda(monkeypatch):
    # A fresh process's state: tests that run megatron-core in this process (test_attention.py)
    # activated the layer already.
    monkeypatch.setattr(cpu_compat, "_ACTIVE", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RuntimeError, match="must not be activated on a CUDA machine"):
        cpu_compat.activate()
    assert not cpu_compat.is_active()


def test_initialize_on_cuda_uses_nccl_and_no_compat_layer(monkeypatch):
    """Simulate a CUDA machine: the init path must pick NCCL, pin the device by local rank,
    and never activate the CPU layer."""
    from megatron.core import parallel_state

    calls = {}
    monkeypatch.setattr(cpu_compat, "_ACTIVE", False)  # as in a fresh process (see above)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("device", d))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: calls.setdefault("pg", kw))
    monkeypatch.setattr(parallel_state, "initialize_model_parallel", lambda **kw: calls.setdefault("mp", kw))
    monkeypatch.setattr(distributed, "seed_everything", lambda seed, pipeline_rank=0: None)
    # megatron-core's groups are not created (initialize_model_parallel is replaced above).
    given = ParallelLayout(world_size=4, tp=2, pp=1, rank=3, tp_rank=1, dp_rank=1)
    monkeypatch.setattr(ParallelLayout, "from_megatron", classmethod(lambda cls: given))
    monkeypatch.setattr(cpu_compat, "activate", lambda: pytest.fail("CPU layer activated on CUDA"))
    from megatron_ixt.runtime import kernels

    h100 = kernels.DeviceFacts(cuda=True, device_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0))
    # The plan is the entry point's (validate_for_this_machine): initialize_distributed never recomputes it.
    monkeypatch.setattr(kernels.DeviceFacts, "detect", staticmethod(lambda: pytest.fail("device facts read again")))
    for k, v in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "MASTER_ADDR": "x", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CUDA_DEVICE_MAX_CONNECTIONS", "unset")  # recorded, so the test's value is undone after
    monkeypatch.delenv("CUDA_DEVICE_MAX_CONNECTIONS")
    from megatron_ixt.config import parse_config

    cfg, _ = parse_config(["--config", str(TINY), "--mock-data", "--tensor-model-parallel-size", "2"])
    assert distributed.initialize_distributed(cfg, kernels.plan_kernels(cfg, h100)) is given
    assert calls["pg"]["backend"] == "nccl" and calls["device"] == 3
    assert calls["mp"]["tensor_model_parallel_size"] == 2 and calls["mp"]["distributed_timeout_minutes"] == 10
    assert os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"  # set before CUDA starts, as Megatron-LM requires
    assert not cpu_compat.is_active()


def test_cpu_compat_is_local_to_megatron_core():
    """After activation megatron-core allocates on CPU, while the real torch is unchanged."""
    code = """
import torch
from megatron_ixt.runtime import cpu_compat
cpu_compat.activate()
import megatron.core.tensor_parallel.layers as layers
assert layers.torch is not torch
assert layers.torch.zeros(2, device="cuda").device.type == "cpu"
assert layers.torch.cuda.current_device() == torch.device("cpu")
try:
    torch.zeros(1, device="cuda")
except (AssertionError, RuntimeError):
    print("global torch untouched")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "global torch untouched" in proc.stdout


# Below the entry points nothing edits the configuration: it is resolved once (config.validate,
# then runtime.kernels.validate_for_this_machine fills transformer_impl) and handed down in the
# run context (training.context.RunContext).
BELOW_THE_ENTRY_POINT = ("runtime", "data", "model", "checkpoint", "training")
RESOLVES_THE_CONFIG = {("megatron_ixt/runtime/kernels.py", "validate_for_this_machine")}


def _config_edits(tree: ast.AST):
    """(function, line) of each assignment into a config section: ``cfg.model.x = ...`` or,
    through a local alias (``m = cfg.model`` / ``m, p = cfg.model, cfg.parallel``), ``m.x = ...``."""
    def roots_in_cfg(node) -> bool:  # cfg.section or self.cfg.section
        return (isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Name, ast.Attribute))
                and ast.unparse(node.value) in ("cfg", "self.cfg"))

    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        aliases = set()
        for node in ast.walk(func):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    pairs = (zip(target.elts, node.value.elts) if isinstance(target, ast.Tuple)
                             and isinstance(node.value, ast.Tuple) else [(target, node.value)])
                    for name, value in pairs:
                        if isinstance(name, ast.Name) and roots_in_cfg(value):
                            aliases.add(name.id)
        for node in ast.walk(func):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AugAssign, ast.AnnAssign)) else []
            for target in targets:
                if isinstance(target, ast.Attribute) and (roots_in_cfg(target.value) or (
                        isinstance(target.value, ast.Name) and target.value.id in aliases)):
                    yield func.name, node.lineno
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and node.args and (
                    roots_in_cfg(node.args[0]) or ast.unparse(node.args[0]) in aliases):
                yield func.name, node.lineno


def test_nothing_below_the_entry_point_edits_the_config():
    edits = []
    for package in BELOW_THE_ENTRY_POINT:
        for path in sorted((REPO / "megatron_ixt" / package).rglob("*.py")):
            name = str(path.relative_to(REPO))
            edits += [f"{name}:{line} ({func})" for func, line in _config_edits(ast.parse(path.read_text()))
                      if (name, func) not in RESOLVES_THE_CONFIG]
    assert not edits, edits
