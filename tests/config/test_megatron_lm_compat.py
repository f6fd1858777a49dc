"""Megatron-LM's launch scripts, unchanged: their flags, the dry run of a GPU job on a CPU
machine, the one-line refusal of Megatron-LM flags this trainer lacks, and the theoretical
memory per GPU against Megatron-LM's own ``theoretical_memory_usage.py``.

The two scripts in ``megatron_lm_scripts/`` are Megatron-LM's examples at core_v0.16.1
(``examples/llama/train_llama3_8b_h100_fp8.sh``, ``examples/gpt3/train_gpt3_175b_distributed.sh``),
copied byte for byte; the test runs each with a ``torchrun`` that records its arguments.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import types
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_ixt.config import ConfigError
from megatron_ixt.config.cli import build_parser, parse_config
from megatron_ixt.config.megatron_lm import ACCEPTED, megatron_lm_flags
from megatron_ixt.config.validate import validate
from megatron_ixt.model.memory import activation_bytes, estimate
from megatron_ixt.runtime.kernels import DeviceFacts, plan_kernels

from tests.launch import REPO, run_python

SCRIPTS = Path(__file__).parent / "megatron_lm_scripts"
UPSTREAM_TARBALL = REPO.parent / "shared" / "reference" / "upstream" / "Megatron-LM-core_v0.16.1.tar.gz"
MIB = 1024 ** 2


def script_arguments(script: Path, tmp_path: Path, *positional: str) -> list[str]:
    """The arguments ``script`` passes to pretrain_gpt.py, as bash expands them."""
    (tmp_path / "pretrain_gpt.py").touch()  # the llama script checks that it runs from Megatron-LM's root
    out = tmp_path / "torchrun.args"
    fake = f"torchrun() {{ printf '%s\\n' \"$@\" > {out}; }}; export -f torchrun; source {script} " + \
        " ".join(positional)
    subprocess.run(["bash", "-c", fake], cwd=tmp_path, check=True, capture_output=True)
    args = out.read_text().splitlines()
    return args[args.index("pretrain_gpt.py") + 1:]


def tiny_gpt_dataset(prefix: Path) -> str:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for i in range(8):
        builder.add_document(torch.arange(1, 40 + i), [39 + i])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


@pytest.mark.parametrize("script, world", [("train_llama3_8b_h100_fp8.sh", 8), ("train_gpt3_175b_distributed.sh", 128)])
def test_megatron_lm_example_scripts_pass_a_dry_run_on_cpu(script, world, tmp_path, gpt2_files):
    if script.startswith("train_llama3"):  # mock data: MOCK tokenizer and data are its defaults
        args = script_arguments(SCRIPTS / script, tmp_path, str(tmp_path / "ckpt"), str(tmp_path / "tb"))
        layout = "world 8 = TP 1 x PP 1 x DP 8"
    else:
        vocab, merges = gpt2_files
        data = tiny_gpt_dataset(tmp_path / "corpus_text_document")
        args = script_arguments(SCRIPTS / script, tmp_path, str(tmp_path / "ckpt"), str(tmp_path / "tb"),
                                vocab, merges, data)
        layout = "world 128 = TP 8 x PP 16 x DP 1"
    proc = run_python("pretrain_ixt.py", [*args, "--dry-run"], env={"WORLD_SIZE": str(world), "RANK": "0"},
                      timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert layout in out and "theoretical memory per GPU" in out and "error" not in proc.stderr
    # What only the GPU nodes can provide is a warning, not a refusal (this machine has no CUDA).
    assert f"dry run: the job needs {world} CUDA GPUs and NCCL" in out
    if script.startswith("train_llama3"):
        assert "--sequence-parallel with --tensor-model-parallel-size 1: switched off" in out
        assert "the job needs Transformer Engine on the GPU nodes (--attention-backend fused, --fp8-format, " \
               "--fp8-param-gather)" in out
        assert "FP8 recipe delayed needs compute capability >= 8.9" in out
        assert "train_samples: 1953125000" in out and "decoupled_lr: 0.0005" in out
    else:
        assert "--vocab-file and --merge-file without --tokenizer-type: GPT2BPETokenizer" in out
        assert "rampup_batch_size:\n  - 16\n  - 16\n  - 5859375" in out and "fp16: true" in out
        # Megatron-LM's own figures for this job (see test_theoretical_memory_is_megatron_lms).
        assert "weights + gradients + optimizer states:    24.10 GiB" in out


def test_dry_run_checks_the_named_gpu_and_the_files(tmp_path):
    fp8 = ["--mock-data", "--vocab-size", "1000", "--bf16", "--fp8-format", "hybrid", "--dry-run"]
    proc = run_python("pretrain_ixt.py", [*fp8, "--dry-run-device", "a100"], timeout=120)
    assert proc.returncode == 2 and "--fp8-recipe delayed needs compute capability 8.9 or newer; " \
                                   "NVIDIA A100-SXM4-80GB has 8.0" in proc.stderr, proc.stderr
    proc = run_python("pretrain_ixt.py", ["--data-path", str(tmp_path / "nowhere"), "--dry-run"], timeout=120)
    assert proc.returncode == 2 and f"nowhere.bin and {tmp_path}/nowhere.idx not found" in proc.stderr, proc.stderr
    proc = run_python("pretrain_ixt.py", ["--mock-data", "--vocab-size", "100", "--dry-run-device", "h100"], timeout=60)
    assert proc.returncode == 2 and "add --dry-run" in proc.stderr


def test_megatron_lm_flags_we_lack_are_refused_in_one_line_naming_why():
    with pytest.raises(ConfigError) as error:
        parse_config(["--mock-data", "--num-experts", "8", "--moe-router-topk", "2", "--tp-comm-overlap",
                      "--log-memory-to-tensorboard", "--no-such-flag", "3"])
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("Megatron-LM core_v0.16.1 flags not supported by megatron_ixt: --num-experts "
                              "(mixture-of-experts layers; this project trains dense GPT models); --moe-router-topk")
    assert "--tp-comm-overlap (Transformer Engine's userbuffer overlap" in message
    assert "--log-memory-to-tensorboard (one of Megatron-LM's 'logging' options" in message
    # The values of a refused flag are not reported as arguments of their own; an unknown flag is.
    assert message.endswith("unrecognized arguments: --no-such-flag 3 (flags of neither megatron_ixt nor Megatron-LM)")
    # No abbreviations (as Megatron-LM): a prefix of one of our flags is not taken for it.
    with pytest.raises(ConfigError, match="unrecognized arguments: --fp8 "):
        parse_config(["--mock-data", "--fp8"])


def test_accepted_flags_change_nothing_and_say_so_in_the_help():
    plain, _ = parse_config(["--mock-data"])
    accepted, _ = parse_config(["--mock-data", *ACCEPTED])
    assert accepted == plain
    help_text = " ".join(build_parser().format_help().split())
    for flag in ACCEPTED:
        assert flag in help_text
    assert "Accepted for Megatron-LM's scripts: this project never builds the [s, s] attention mask" in help_text
    # Every flag of ours that Megatron-LM also has keeps its name: the table knows them.
    known = megatron_lm_flags()
    for flag in ("--train-samples", "--rampup-batch-size", "--calculate-per-token-loss", "--apply-layernorm-1p",
                 "--fp16", "--profile-step-start", "--wandb-project", "--tiktoken-pattern", *ACCEPTED):
        assert flag in known, flag


def test_the_flag_table_is_megatron_lms_own_parser(tmp_path):
    """``megatron_lm_flags.json`` regenerated from Megatron-LM's source equals the committed one."""
    if not UPSTREAM_TARBALL.exists():
        pytest.skip(f"Megatron-LM's source is not at {UPSTREAM_TARBALL}")
    with tarfile.open(UPSTREAM_TARBALL) as tar:
        tar.extractall(tmp_path, members=[m for m in tar.getmembers() if "/megatron/" in m.name], filter="data")
    (upstream,) = tmp_path.iterdir()
    out = tmp_path / "flags.json"
    proc = run_python("megatron_ixt/config/megatron_lm.py", ["--upstream", upstream, "--output", out], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_text() == (REPO / "megatron_ixt" / "config" / "megatron_lm_flags.json").read_text()


def _job(*flags: str, world: int):
    cfg, _ = parse_config(["--mock-data", *flags])
    validate(cfg, world, cuda=True)
    return cfg


LLAMA3_8B = ("--num-layers 32 --hidden-size 4096 --ffn-hidden-size 14336 --num-attention-heads 32 --group-query-attention "
             "--num-query-groups 8 --kv-channels 128 --seq-length 8192 --swiglu --untie-embeddings-and-output-weights "
             "--micro-batch-size 1 --global-batch-size 128 --bf16 --use-distributed-optimizer --vocab-size 128000").split()
GPT3_175B = ("--num-layers 96 --hidden-size 12288 --num-attention-heads 96 --seq-length 2048 --micro-batch-size 1 "
             "--global-batch-size 1536 --fp16 --tensor-model-parallel-size 8 --pipeline-model-parallel-size 16 "
             "--vocab-size 50000").split()
# Megatron-LM's report_theoretical_memory (core_v0.16.1) for the same jobs, in MiB (weights and
# optimizer, activations), run on its own args: Llama-3-8B at DP 8 with padded vocabulary 128256,
# GPT-3 175B at TP 8 x PP 16 with 51200, and a small model at TP 2 with sequence parallelism.
SP_TP2 = ("--num-layers 4 --hidden-size 1024 --num-attention-heads 16 --seq-length 2048 --micro-batch-size 1 --bf16 "
          "--tensor-model-parallel-size 2 --sequence-parallel --recompute-granularity selective --vocab-size 32000").split()
MEGATRON_LM_MIB = {"llama3_8b": (57438.80859375, 38761.865625), "gpt3_175b": (24678.636108398438, 31853.0625),
                   "sp_tp2": (720.158203125, 269.0078125)}


def _megatron_lm_memory(job: str):
    """Megatron-LM's own function on these jobs when its source is here, else its recorded figures."""
    if not UPSTREAM_TARBALL.exists():
        return MEGATRON_LM_MIB[job]
    with tarfile.open(UPSTREAM_TARBALL) as tar:
        source = tar.extractfile("Megatron-LM-core_v0.16.1/megatron/training/theoretical_memory_usage.py").read()
    module = types.ModuleType("theoretical_memory_usage")
    module.__dict__["print_rank_0"] = lambda *a, **k: None
    exec(compile(source.decode().replace("from .utils import print_rank_0", ""), "theoretical_memory_usage.py",
                 "exec"), module.__dict__)
    common = dict(num_experts=None, moe_shared_expert_intermediate_size=None, mtp_num_layers=None,
                  multi_latent_attention=False, is_hybrid_model=False, moe_layer_freq=1, kv_channels=128,
                  normalization="LayerNorm", virtual_pipeline_model_parallel_size=None, sequence_parallel=False,
                  recompute_granularity=None, micro_batch_size=1)
    if job == "llama3_8b":
        args = Namespace(**common, num_attention_heads=32, hidden_size=4096, group_query_attention=True,
                         num_query_groups=8, swiglu=True, ffn_hidden_size=14336, num_layers=32, padded_vocab_size=128256,
                         untie_embeddings_and_output_weights=True, pipeline_model_parallel_size=1,
                         tensor_model_parallel_size=1, use_distributed_optimizer=True, data_parallel_size=8,
                         seq_length=8192)
        microbatches = 16
    elif job == "sp_tp2":
        args = Namespace(**{**common, "sequence_parallel": True, "recompute_granularity": "selective", "kv_channels": 64},
                         num_attention_heads=16, hidden_size=1024, group_query_attention=False, num_query_groups=None,
                         swiglu=False, ffn_hidden_size=4096, num_layers=4, padded_vocab_size=32768,
                         untie_embeddings_and_output_weights=False, pipeline_model_parallel_size=1,
                         tensor_model_parallel_size=2, use_distributed_optimizer=False, data_parallel_size=1,
                         seq_length=2048)
        microbatches = 1
    else:
        args = Namespace(**common, num_attention_heads=96, hidden_size=12288, group_query_attention=False,
                         num_query_groups=None, swiglu=False, ffn_hidden_size=4 * 12288, num_layers=96,
                         padded_vocab_size=51200, untie_embeddings_and_output_weights=False,
                         pipeline_model_parallel_size=16, tensor_model_parallel_size=8, use_distributed_optimizer=False,
                         data_parallel_size=1, seq_length=2048)
        microbatches = 1536
    weights, activations, _ = module.report_theoretical_memory(args, num_microbatches=microbatches)
    return weights, activations


@pytest.mark.parametrize("job, flags, world, padded", [("llama3_8b", LLAMA3_8B, 8, 128256),
                                                        ("gpt3_175b", GPT3_175B, 128, 51200),
                                                        ("sp_tp2", SP_TP2, 2, 32768)])
def test_theoretical_memory_is_megatron_lms(job, flags, world, padded):
    cfg = _job(*flags, world=world)
    ours = estimate(cfg, world, padded)
    weights, activations = _megatron_lm_memory(job)
    assert ours.weights_and_optimizer / MIB == pytest.approx(weights, rel=1e-9)
    assert ours.activations["selective"] / MIB == pytest.approx(activations, rel=1e-9)
    # Flash attention stores no scores: no recomputation keeps what selective keeps; an unfused
    # kernel keeps 5 a s^2 b bytes more per layer (split by TP), as Korthikanti et al. count.
    assert ours.activations["none"] == ours.activations["selective"]
    m = cfg.model
    scores = 5 * m.num_attention_heads * m.seq_length ** 2 * cfg.training.micro_batch_size / \
        cfg.parallel.tensor_model_parallel_size
    unfused = estimate(cfg, world, padded, scores_stored=True)
    extra = unfused.activations["none"] - unfused.activations["selective"]
    in_flight = m.num_layers * min(1, 1536 / 16) if job == "gpt3_175b" else m.num_layers
    overhead = 1.0 if cfg.parallel.sequence_parallel else 1.05  # Megatron-LM's 5 % without sequence parallelism
    assert extra == pytest.approx(scores * in_flight * overhead, rel=1e-12)


def test_full_recomputation_keeps_only_the_checkpointed_inputs():
    base = LLAMA3_8B + ["--recompute-granularity", "full", "--recompute-method"]
    uniform = _job(*base, "uniform", "--recompute-num-layers", "1", world=8)
    s, b, h, L = 8192, 1, 4096, 32
    vocab = 128256
    layer = s * b * h * (10 + 24)  # Megatron-LM's per-layer figure without sequence parallelism, TP 1
    embedding = 8 * s * b + s * b * h
    output = (s * b * vocab + s * b * h) * 2
    expected = (L * 2 * s * b * h + embedding + output) * 1.05 + layer  # inputs + one layer recomputed
    assert activation_bytes(uniform, "full", 16, vocab) == pytest.approx(expected, rel=1e-12)
    block = _job(*base, "block", "--recompute-num-layers", "8", world=8)
    expected = (8 * 2 * s * b * h + 24 * layer + embedding + output) * 1.05 + layer
    assert activation_bytes(block, "full", 16, vocab) == pytest.approx(expected, rel=1e-12)
    assert estimate(uniform, 8, vocab).recompute == "full"


def test_context_parallelism_and_fp8_parameters_need_transformer_engine():
    cpu = DeviceFacts(cuda=False, flex_attention=True)
    h100_bare = DeviceFacts(cuda=True, device_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0))
    h100_te = DeviceFacts(cuda=True, device_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0), te_version="2.8.0")
    cfg, _ = parse_config(["--mock-data", "--vocab-size", "100", "--context-parallel-size", "1"])
    plan_kernels(cfg, cpu)  # CP 1 is the default: accepted anywhere
    cfg, _ = parse_config(["--mock-data", "--vocab-size", "100", "--context-parallel-size", "2", "--seq-length", "256"])
    validate(cfg, 4, cuda=False)
    assert cfg.training.global_batch_size == 2 * 2  # DP = 4 / CP 2
    for facts in (cpu, h100_bare):
        with pytest.raises(ConfigError, match="--context-parallel-size 2 needs Transformer Engine's attention"):
            plan_kernels(cfg, facts)
    assert plan_kernels(cfg, h100_te).attention == "te"
    for flags, message in ((["--seq-length", "250"], r"--seq-length \(250\) must be divisible by 2 x --context-parallel-size"),
                           (["--reset-attention-mask"], "padded to multiples of 2 x CP")):
        cfg, _ = parse_config(["--mock-data", "--vocab-size", "100", "--context-parallel-size", "2", *flags])
        with pytest.raises(ConfigError, match=message):
            validate(cfg, 2, cuda=True)
    cfg, _ = parse_config(["--mock-data", "--vocab-size", "100", "--bf16", "--fp8-format", "hybrid", "--fp8-param-gather"])
    with pytest.raises(ConfigError, match="--fp8-param-gather needs --use-distributed-optimizer"):
        validate(cfg, 1, cuda=True)


def test_a_resolved_sample_based_configuration_reads_back(tmp_path):
    """What a dry run prints and a checkpoint records (train_iters derived from train_samples,
    with the ramp-up) is a configuration file that gives the same run."""
    from megatron_ixt.config.cli import config_to_yaml

    flags = ["--train-samples", "5000", "--global-batch-size", "16", "--micro-batch-size", "2",
             "--rampup-batch-size", "4", "4", "1000", "--lr-warmup-samples", "100"]
    cfg = _job("--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--vocab-size", "1000",
               *flags, world=2)
    (tmp_path / "resolved.yaml").write_text(config_to_yaml(cfg))
    again, ns = parse_config(["--config", str(tmp_path / "resolved.yaml")])
    validate(again, 2, cuda=True)
    assert again == cfg and cfg.training.train_iters > 5000 // 16  # the ramp's smaller steps add iterations
