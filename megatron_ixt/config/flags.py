"""Flags from typed dataclass fields: the one argparse generator of the project.

A field declared with ``schema.arg(default, help, choices=..., nargs=..., flag=...)`` becomes
``--field-name`` with its help, its default and a type taken from the annotation
(``typing.get_type_hints``, so ``float`` stays ``float`` and ``Optional[int]`` is ``int``).
Every tool but the trainer builds its command line with ``add_dataclass_arguments`` (and
reads it back with ``dataclass_values``); ``field_kwargs`` is the per-field rule, shared with
the training command line's builder (``config.cli``). Nothing here imports more than the
standard library: the data tools' ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Optional, Sequence

from megatron_ixt.config.schema import TOKENIZER_FILE_FIELDS, TokenizerConfig


def leaf_type(tp: Any) -> Any:
    """``Optional[int]`` -> ``int``; ``list[str]`` -> ``list``; other types unchanged."""
    if typing.get_origin(tp) is typing.Union:
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
    return typing.get_origin(tp) or tp


def flag_name(field: dataclasses.Field) -> str:
    return "--" + (field.metadata.get("flag") or field.name.replace("_", "-"))


def field_kwargs(field: dataclasses.Field, tp: Any, bool_action: Any = "store_true") -> dict[str, Any]:
    """``add_argument`` keyword arguments of one field (help, type, choices, nargs, action)."""
    kwargs: dict[str, Any] = {"help": field.metadata.get("help", "")}
    if tp is bool:
        kwargs["action"] = bool_action
    elif tp is list:
        kwargs["nargs"] = field.metadata.get("nargs") or "+"
        if field.metadata.get("item", str) is not str:
            kwargs["type"] = field.metadata["item"]
    else:
        kwargs["type"] = tp
        if field.metadata.get("choices"):
            kwargs["choices"] = field.metadata["choices"]
    return kwargs


def add_dataclass_arguments(parser: Any, cls: type,
                            aliases: Optional[dict[str, tuple[str, ...]]] = None, *,
                            fields: Optional[Sequence[str]] = None,
                            defaults: Optional[dict[str, Any]] = None,
                            helps: Optional[dict[str, str]] = None,
                            required: Sequence[str] = ()) -> None:
    """One flag per field of ``cls``: required when the field has no default, else with the
    default (shown in the help). ``parser`` may be an argument group or a mutually exclusive
    group. A field that is itself a dataclass gets no flag. ``aliases`` maps a field name to older flag spellings that still work (hidden from
    the help).

    A tool that shares a class with others (``ParallelConfig``, ``TokenizerConfig``) but not
    all of its fields or meanings narrows it: ``fields`` (names, in flag order), ``defaults``
    and ``helps`` (by name, e.g. ``None`` and "default: the checkpoint's" where the value comes
    from a checkpoint), ``required`` (names that must be given although the field has a
    default)."""
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    for name in fields if fields is not None else list(by_name):
        field = by_name[name]
        tp = leaf_type(hints[name])
        if dataclasses.is_dataclass(tp):
            continue  # a nested config (PreprocessConfig.tokenizer): its class adds its own flags
        kwargs = field_kwargs(field, tp)
        if helps and name in helps:
            kwargs["help"] = helps[name]
        if name in required:
            kwargs["required"] = True
        elif defaults and name in defaults:
            kwargs["default"] = defaults[name]
        elif field.default is not dataclasses.MISSING:
            kwargs["default"] = field.default
        elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            kwargs["default"] = field.default_factory()  # type: ignore[misc]
        else:
            kwargs["required"] = True
        if "default" in kwargs and tp is not bool and kwargs["default"] not in (None, []):
            shown = " ".join(map(str, kwargs["default"])) if tp is list else kwargs["default"]
            kwargs["help"] += f" (default: {shown})"
        parser.add_argument(flag_name(field), dest=name, **kwargs)
        for alias in (aliases or {}).get(name, ()):
            parser.add_argument(alias, dest=name, help=argparse.SUPPRESS,
                                **{k: v for k, v in kwargs.items() if k not in ("help", "required", "default")})


def dataclass_values(args: argparse.Namespace, cls: type, **fixed: Any) -> Any:
    """An instance of ``cls`` from the parsed flags of its fields (those ``args`` has);
    ``fixed`` sets the others (e.g. a nested config built from its own flags)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **fixed})


def add_tokenizer_overrides(parser: Any, help: str) -> None:
    """``--tokenizer-type``/``--tokenizer-model``/``--vocab-file``/``--merge-file`` as optional
    overrides of a checkpoint's tokenizer (default None: the checkpoint's own)."""
    add_dataclass_arguments(parser, TokenizerConfig, fields=TOKENIZER_FILE_FIELDS,
                            defaults=dict.fromkeys(TOKENIZER_FILE_FIELDS), helps=dict.fromkeys(TOKENIZER_FILE_FIELDS, help))
