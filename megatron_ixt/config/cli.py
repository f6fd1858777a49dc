"""Command line and YAML loading, generated from the dataclasses in ``schema.py``.

Precedence: dataclass defaults < ``--config FILE.yaml`` < flags on the command line.
Every leaf field ``foo_bar`` is the flag ``--foo-bar``; booleans are switches (Megatron-LM
style: ``--bf16``, ``--sequence-parallel``), each with a negative form (``--no-bf16``; for a
field that is itself a negation, ``--no-load-optim``, the positive ``--load-optim``) so that
a ``true`` in a YAML file can be turned off on the command line. A YAML value is checked as
strictly as the flag: type and choices, with the same one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Optional, Sequence

import yaml

from megatron_ixt.config.flags import field_kwargs, flag_name
from megatron_ixt.config.megatron_lm import add_accepted_flags, unsupported_flags_error
from megatron_ixt.config.schema import ITERATION_SCHEDULE_FIELDS, SAMPLE_SCHEDULE_FIELDS, SECTIONS, Config


DRY_RUN_DEVICES = {
    # name -> (device name as torch reports it, compute capability)
    "h100": ("NVIDIA H100 80GB HBM3", (9, 0)),
    "h200": ("NVIDIA H200", (9, 0)),
    "gh200": ("NVIDIA GH200 480GB", (9, 0)),
    "a100": ("NVIDIA A100-SXM4-80GB", (8, 0)),
    "l40s": ("NVIDIA L40S", (8, 9)),
    "a10g": ("NVIDIA A10G", (8, 6)),
    "b200": ("NVIDIA B200", (10, 0)),
}
"""``--dry-run-device``'s choices: the GPUs whose facts the kernel plan and the FLOPs table know."""


class ConfigError(Exception):
    """A configuration the run cannot start with. The message names the flags involved;
    entry points print it on one line and exit with status 2."""

    exit_code = 2


def _leaf_type(tp: Any) -> Any:
    """``Optional[int]`` -> ``int``; ``list`` stays ``list``."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def leaf_fields() -> dict[str, tuple[str, dataclasses.Field, Any]]:
    """Every leaf of the tree: ``name -> (section, field, python type)``. Leaf names are
    unique across sections, which is what lets flags and flat YAML keys stay short."""
    leaves: dict[str, tuple[str, dataclasses.Field, Any]] = {}
    for section_field in dataclasses.fields(Config):
        section_cls = section_field.default_factory  # type: ignore[misc]
        hints = typing.get_type_hints(section_cls)
        for f in dataclasses.fields(section_cls):
            assert f.name not in leaves, f"duplicate config leaf {f.name}"
            leaves[f.name] = (section_field.name, f, _leaf_type(hints[f.name]))
    return leaves


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the whole usage (hundreds of flags) before an error; we want the
    error alone, on one line, with argparse's exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(message)


class _Switch(argparse.Action):
    """A boolean flag and its negation (``--bf16`` / ``--no-bf16``), as
    ``argparse.BooleanOptionalAction``, except that a field named as a negation
    (``no_load_optim``) gets ``--load-optim`` rather than ``--no-no-load-optim``."""

    def __init__(self, option_strings, dest, **kwargs):
        self.positive = option_strings[0]
        flag = self.positive[2:]
        negative = "--" + flag[3:] if flag.startswith("no-") else "--no-" + flag
        super().__init__([self.positive, negative], dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, option_string == self.positive)

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


def build_parser(prog: str = "pretrain_ixt.py", description: Optional[str] = None) -> argparse.ArgumentParser:
    # No abbreviations, as Megatron-LM: a flag of its own that we lack must not be taken for a
    # longer one of ours (--fp8 for --fp8-format).
    parser = _OneLineErrorParser(prog=prog, description=description, allow_abbrev=False,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file with any of the fields below.")
    parser.add_argument("--dry-run", action="store_true",
                        help="Check the job without running it: the resolved configuration, the parallel layout, "
                             "the kernel plan and the theoretical memory per GPU, for the job's own hardware (a "
                             "GPU job is checked as such on a CPU login node; what the hardware must provide is "
                             "printed as warnings), then exit 0.")
    parser.add_argument("--dry-run-device", choices=sorted(DRY_RUN_DEVICES), default=None,
                        help="--dry-run: the GPU the job will run on (default: a CUDA GPU when the job's flags "
                             "need one, else this machine), for what the kernel plan checks (FP8 recipes "
                             "against the compute capability) and the peak throughput.")
    add_accepted_flags(parser)
    groups = {name: parser.add_argument_group(name) for name in SECTIONS}
    for name, (section, field, tp) in leaf_fields().items():
        # The one per-field rule (config/flags.py), shared with tools/preprocess_data.py.
        kwargs = {"dest": name, "default": argparse.SUPPRESS, **field_kwargs(field, tp, bool_action=_Switch)}
        groups[section].add_argument(flag_name(field), **kwargs)
    return parser


def _coerce(name: str, value: Any, tp: Any, where: str, choices: Optional[tuple] = None, item: type = str) -> Any:
    if value is None:
        return None
    if choices and value not in choices:
        # argparse's own wording for the same mistake made on the command line.
        raise ConfigError(f"{where}: '{name}': invalid choice: {value!r} "
                          f"(choose from {', '.join(repr(c) for c in choices)})")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is list and isinstance(value, (str, int, float)):
        value = str(value).split()
    if tp is list and isinstance(value, list):
        try:
            return [item(v) for v in value]
        except ValueError:
            raise ConfigError(f"{where}: '{name}' must be a list of {item.__name__}, got {value!r}") from None
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: '{name}' must be {tp.__name__}, got {value!r}")
    return value


def load_yaml(path: str) -> dict[str, Any]:
    """Read a YAML config into ``{leaf: value}``. Accepts sections (``model: {num_layers: 4}``)
    or flat leaves (``num_layers: 4``); keys may use dashes like the flags."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {path}: expected a mapping of fields, got {type(raw).__name__}")
    leaves = leaf_fields()
    values: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        name = key.replace("-", "_")
        if name not in leaves:
            raise ConfigError(f"--config {path}: unknown field '{key}'")
        _, field, tp = leaves[name]
        values[name] = _coerce(name, value, tp, f"--config {path}", field.metadata.get("choices"),
                               field.metadata.get("item", str))

    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                put(sub_key, sub_value)
        else:
            put(key, value)
    return values


def parse_config(argv: Optional[Sequence[str]] = None) -> tuple[Config, argparse.Namespace]:
    """Resolve the configuration from defaults, ``--config`` and flags. Returns the config
    and the parsed namespace (for entry-point options such as ``--dry-run``)."""
    parser = build_parser()
    ns, extras = parser.parse_known_args(argv)
    if extras:  # a Megatron-LM flag we lack is named with why, not as "unrecognized arguments"
        raise ConfigError(unsupported_flags_error(extras))
    values = load_yaml(ns.config) if ns.config else {}
    flags = {name: getattr(ns, name) for name in leaf_fields() if hasattr(ns, name)}
    # A run length given by flag overrides the file's schedule of the other kind (a file's
    # --train-iters and warm-up iterations under --train-samples), as any flag overrides the file.
    for chosen, other in (("train_samples", ITERATION_SCHEDULE_FIELDS), ("train_iters", SAMPLE_SCHEDULE_FIELDS)):
        if chosen in flags:
            values = {name: value for name, value in values.items() if name not in other}
    values.update(flags)
    ns.given_fields = frozenset(values)  # set by a flag or --config: what validate.check_given checks
    return apply_overrides(Config(), values), ns


def apply_overrides(cfg: Config, values: dict[str, Any]) -> Config:
    """Set leaves by name (``{"lr": 1e-3, "tensor_model_parallel_size": 2}``) in ``cfg``;
    the one place that maps a leaf name to its section. Returns ``cfg``."""
    leaves = leaf_fields()
    for name, value in values.items():
        if name not in leaves:
            raise ConfigError(f"unknown configuration field '{name}'")
        setattr(getattr(cfg, leaves[name][0]), name, value)
    return cfg


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
