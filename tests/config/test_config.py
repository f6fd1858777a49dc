"""The configuration tree, its command line and every validation error (message + exit 2)."""

from __future__ import annotations

import pytest

from tests.launch import TINY, run_python
from megatron_ixt.config import Config, ConfigError, load_yaml, parse_config, validate
from megatron_ixt.config.cli import build_parser, leaf_fields


def test_every_leaf_is_a_megatron_style_flag():
    parser = build_parser()
    flags = {a for action in parser._actions for a in action.option_strings}
    for name in ["--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--num-layers-per-virtual-pipeline-stage",
                 "--sequence-parallel", "--micro-batch-size", "--global-batch-size", "--seq-length", "--num-layers",
                 "--hidden-size", "--num-attention-heads", "--num-query-groups", "--train-iters", "--lr", "--min-lr",
                 "--lr-decay-style", "--lr-warmup-iters", "--weight-decay", "--clip-grad", "--bf16", "--fp8-format",
                 "--fp8-recipe", "--transformer-impl", "--data-path", "--split", "--data-cache-path", "--save", "--load",
                 "--save-interval", "--eval-interval", "--eval-iters", "--log-interval", "--tensorboard-dir",
                 "--use-distributed-optimizer", "--ixt-prefix-loss", "--ixt-feedback-dropout"]:
        assert name in flags, name
    assert len(flags) >= len(leaf_fields())


def test_yaml_then_flags_override(tmp_path):
    cfg, _ = parse_config(["--config", str(TINY), "--num-layers", "8", "--bf16"])
    assert cfg.model.num_layers == 8 and cfg.model.hidden_size == 64 and cfg.model.bf16
    flat = tmp_path / "flat.yaml"
    flat.write_text("num-layers: 6\nlr: 1\ndata_path: 0.3 a 0.7 b\n")
    values = load_yaml(str(flat))
    assert values == {"num_layers": 6, "lr": 1.0, "data_path": ["0.3", "a", "0.7", "b"]}


def test_yaml_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  num_layerz: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown field 'num_layerz'"):
        load_yaml(str(bad))
    bad.write_text("num_layers: four\n")
    with pytest.raises(ConfigError, match=r"'num_layers' must be int"):
        load_yaml(str(bad))


def _cfg(*flags) -> Config:
    cfg, _ = parse_config(["--config", str(TINY), "--mock-data", *map(str, flags)])
    return cfg


@pytest.mark.parametrize("flags, world, cuda, te, message", [
    (["--tensor-model-parallel-size", 2], 3, False, False,
     r"world size 3 is not divisible by --tensor-model-parallel-size \(2\) x --pipeline-model-parallel-size \(1\)"),
    # The model's shapes against the layout come first, whatever the world size.
    (["--tensor-model-parallel-size", 3], 4, False, False,
     r"--num-attention-heads \(4\) is not divisible by --tensor-model-parallel-size \(3\)"),
    (["--tensor-model-parallel-size", 2, "--ffn-hidden-size", 33], 2, False, False,
     r"--ffn-hidden-size \(33\) is not divisible by --tensor-model-parallel-size \(2\)"),
    (["--pipeline-model-parallel-size", 3], 3, False, False, r"--num-layers \(4\) is not divisible by --pipeline-model-parallel-size \(3\)"),
    (["--pipeline-model-parallel-size", 2, "--num-layers-per-virtual-pipeline-stage", 3], 2, False, False,
     r"is not divisible by --num-layers-per-virtual-pipeline-stage \(3\)"),
    (["--tensor-model-parallel-size", 8, "--num-attention-heads", 4, "--num-query-groups", 4], 8, False, False,
     r"--num-attention-heads \(4\) is not divisible by --tensor-model-parallel-size \(8\)"),
    (["--tensor-model-parallel-size", 4], 4, False, False, r"--num-query-groups \(2\) is not divisible by --tensor-model-parallel-size \(4\)"),
    (["--global-batch-size", 6], 2, False, False,
     r"--global-batch-size \(6\) is not divisible by --micro-batch-size \(2\) x data-parallel size \(2\)"),
    (["--use-distributed-optimizer"], 2, False, False, r"--use-distributed-optimizer needs NCCL \(gloo has no reduce-scatter\)"),
    (["--lr-warmup-iters", 100], 1, False, False, r"warm-up \(100 iterations"),
    (["--sft"], 1, False, False, r"--sft trains on conversations: pass --data-path PREFIX"),
])
def test_validation_errors(flags, world, cuda, te, message):
    with pytest.raises(ConfigError, match=message):
        validate(_cfg(*flags), world, cuda=cuda)


def test_valid_config_fills_derived_defaults():
    cfg = _cfg("--tensor-model-parallel-size", 2)
    validate(cfg, 4, cuda=False)
    assert cfg.training.global_batch_size == 8  # from the YAML


@pytest.mark.parametrize("args, env, message", [
    (["--tensor-model-parallel-size", "3"], {"WORLD_SIZE": "4", "RANK": "0"}, "is not divisible by --tensor-model-parallel-size (3)"),
    (["--no-such-flag", "1"], {}, "unrecognized arguments: --no-such-flag 1"),
    (["--use-distributed-optimizer"], {}, "--use-distributed-optimizer needs NCCL"),
    (["--fp8-format", "e4m3"], {}, "needs Transformer Engine: install Transformer Engine"),
    # A mask combination that cannot be honoured is refused before anything runs.
    (["--reset-attention-mask", "--attention-backend", "flash"], {},
     "--attention-backend flash selects a Transformer Engine kernel and needs --transformer-impl transformer_engine"),
])
def test_entry_point_exits_2_with_one_line(args, env, message):
    proc = run_python("pretrain_ixt.py", ["--config", TINY, "--mock-data", *args], env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line and "warn" not in line]
    assert lines[-1].startswith("pretrain_ixt.py: error: ") and message in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr


def test_dry_run_prints_config_and_layout():
    proc = run_python("pretrain_ixt.py", ["--config", TINY, "--mock-data", "--tensor-model-parallel-size", "2",
                                          "--pipeline-model-parallel-size", "2", "--dry-run"],
                      env={"WORLD_SIZE": "8", "RANK": "0"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "tensor_model_parallel_size: 2" in proc.stdout
    assert "world 8 = TP 2 x PP 2 x DP 2" in proc.stdout
    assert "rank    5: tp 1 pp 1 dp 0" in proc.stdout


def test_yaml_value_outside_the_choices_is_refused_like_the_flag(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  position_embedding_type: alibi\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: 'position_embedding_type': invalid choice: 'alibi' "
                                          r"\(choose from 'rope', 'learned_absolute'\)"):
        load_yaml(str(bad))
    proc = run_python("pretrain_ixt.py", ["--config", bad, "--mock-data", "--vocab-size", 64, "--dry-run"], timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("pretrain_ixt.py: error: --config "), proc.stderr
    # The same mistake as a flag: argparse's message, the same exit status.
    with pytest.raises(ConfigError, match=r"invalid choice: 'alibi' \(choose from 'rope', 'learned_absolute'\)"):
        parse_config(["--position-embedding-type", "alibi"])


def test_every_boolean_can_be_turned_off_on_the_command_line():
    parser = build_parser()
    flags = {a for action in parser._actions for a in action.option_strings}
    for name, (_, field, tp) in leaf_fields().items():
        if tp is bool:
            flag = "--" + name.replace("_", "-")
            negative = "--" + flag[5:] if flag.startswith("--no-") else "--no-" + flag[2:]
            assert flag in flags and negative in flags, name
    # TINY sets swiglu, disable_bias_linear and untie_embeddings_and_output_weights to true.
    cfg, _ = parse_config(["--config", str(TINY), "--no-swiglu", "--no-disable-bias-linear", "--bf16", "--no-bf16"])
    assert not cfg.model.swiglu and not cfg.model.disable_bias_linear and not cfg.model.bf16
    assert cfg.model.untie_embeddings_and_output_weights  # untouched
    # A field that is itself a negation: its positive form, not --no-no-load-optim.
    assert parse_config(["--no-load-optim"])[0].checkpoint.no_load_optim
    assert not parse_config(["--no-load-optim", "--load-optim"])[0].checkpoint.no_load_optim


def test_one_override_function():
    from megatron_ixt.config import apply_overrides

    cfg = apply_overrides(Config(), {"lr": 0.5, "tensor_model_parallel_size": 2, "ixt_prefix_loss": "exclude"})
    assert (cfg.optimizer.lr, cfg.parallel.tensor_model_parallel_size, cfg.ixt.ixt_prefix_loss) == (0.5, 2, "exclude")
    with pytest.raises(ConfigError, match="unknown configuration field 'learning_rate'"):
        apply_overrides(Config(), {"learning_rate": 1})


def test_schedule_override_flags_exclude_each_other():
    with pytest.raises(ConfigError, match="--override-opt-param-scheduler and --use-checkpoint-opt-param-scheduler"):
        validate(_cfg("--override-opt-param-scheduler", "--use-checkpoint-opt-param-scheduler"), 1, cuda=False)


def test_tokenizer_section_and_the_old_layouts(tmp_path):
    cfg = _cfg("--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", "tok.model")
    assert (cfg.tokenizer.tokenizer_type, cfg.tokenizer.tokenizer_model, cfg.tokenizer.vocab_size) == (
        "SentencePieceTokenizer", "tok.model", 509)
    assert cfg.tokenizer.padded_vocab_size(512, 2) == 512 and cfg.tokenizer.padded_vocab_size(513, 2) == 640
    # A YAML file written before the tokenizer had its own section: the fields under data/model.
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  tokenizer_type: GPT2BPETokenizer\n  vocab_file: v.json\n  merge_file: m.bpe\n"
                   "model:\n  vocab_size: 100\n  make_vocab_size_divisible_by: 8\n")
    cfg, _ = parse_config(["--config", str(old), "--mock-data"])
    assert (cfg.tokenizer.tokenizer_type, cfg.tokenizer.vocab_file, cfg.tokenizer.merge_file) == (
        "GPT2BPETokenizer", "v.json", "m.bpe")
    assert (cfg.tokenizer.vocab_size, cfg.tokenizer.make_vocab_size_divisible_by) == (100, 8)


def test_config_saved_in_the_old_layout_loads():
    # A checkpoint's config from before the tokenizer section (tokenizer fields under data and model).
    saved = Config().to_dict()
    tokenizer = saved.pop("tokenizer")
    saved["data"].update(tokenizer_type="SentencePieceTokenizer", tokenizer_model="tok.model",
                         vocab_file=None, merge_file=None)
    saved["model"].update(vocab_size=None, make_vocab_size_divisible_by=64, num_layers=6)
    saved["model"]["removed_long_ago"] = 1  # a field no section holds any more is dropped
    cfg = Config.from_dict(saved)
    assert (cfg.tokenizer.tokenizer_type, cfg.tokenizer.tokenizer_model) == ("SentencePieceTokenizer", "tok.model")
    assert cfg.tokenizer.make_vocab_size_divisible_by == 64 and cfg.model.num_layers == 6
    assert not hasattr(cfg.model, "removed_long_ago") and set(tokenizer) == set(cfg.to_dict()["tokenizer"])
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_flags_that_do_nothing_under_sft_are_refused_when_given(tmp_path):
    """--eod-mask-loss and --ixt-prefix-loss include would be ignored by --sft: refused when given
    on the command line or in --config, with why; --reset-position-ids (SFT restarts positions
    per conversation anyway) and the defaults pass."""
    from megatron_ixt.config.cli import parse_config
    from megatron_ixt.config.validate import check_given

    def check(*flags, yaml_text=None):
        argv = ["--sft", "--data-path", "d", *map(str, flags)]
        if yaml_text is not None:
            (tmp_path / "c.yaml").write_text(yaml_text)
            argv += ["--config", str(tmp_path / "c.yaml")]
        cfg, ns = parse_config(argv)
        check_given(cfg, ns.given_fields)

    check()  # ixt_prefix_loss's default ("include") was not asked for
    check("--reset-position-ids", "--reset-attention-mask", "--ixt-prefix-loss", "exclude")
    with pytest.raises(ConfigError, match=r"--eod-mask-loss does nothing under --sft: SFT trains the assistant "
                                          r"turns only, each with its end .*; drop it"):
        check("--eod-mask-loss")
    with pytest.raises(ConfigError, match=r"--ixt-prefix-loss include does nothing under --sft: the feedback is in "
                                          r"the system message, which SFT never trains"):
        check(yaml_text="ixt:\n  ixt_prefix_loss: include\n")
    proc = run_python("pretrain_ixt.py", ["--sft", "--data-path", tmp_path / "d", "--eod-mask-loss"], timeout=120)
    assert proc.returncode == 2 and "pretrain_ixt.py: error: --eod-mask-loss does nothing under --sft" in proc.stderr


def test_sequence_parallel_at_tp1_is_switched_off_with_a_warning(caplog):
    """Megatron-LM's rule: a launch script's --sequence-parallel at TP=1 is turned off, not refused."""
    cfg = _cfg("--sequence-parallel")
    validate(cfg, 1, cuda=False)
    assert cfg.parallel.sequence_parallel is False
    assert "--sequence-parallel with --tensor-model-parallel-size 1: switched off" in caplog.text
    cfg = _cfg("--sequence-parallel", "--tensor-model-parallel-size", 2)
    validate(cfg, 2, cuda=False)
    assert cfg.parallel.sequence_parallel is True
