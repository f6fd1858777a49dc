"""Flags from typed dataclass fields: the one argparse generator of the project.

A field declared with ``schema.arg(default, help, choices=..., nargs=..., flag=...)`` becomes
``--field-name`` with its help, its default and a type taken from the annotation
(``typing.get_type_hints``, so ``float`` stays ``float`` and ``Optional[int]`` is ``int``).
``tools/preprocess_data.py`` builds its command line with ``add_dataclass_arguments``;
``field_kwargs`` is the per-field rule, shared with the training command line's builder.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Optional


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
    else:
        kwargs["type"] = tp
        if field.metadata.get("choices"):
            kwargs["choices"] = field.metadata["choices"]
    return kwargs


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type,
                            aliases: Optional[dict[str, tuple[str, ...]]] = None) -> None:
    """One flag per field of ``cls``: required when the field has no default, else with the
    default (shown in the help). ``aliases`` maps a field name to older flag spellings that
    still work (hidden from the help)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        tp = leaf_type(hints[field.name])
        kwargs = field_kwargs(field, tp)
        if field.default is not dataclasses.MISSING:
            kwargs["default"] = field.default
        elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            kwargs["default"] = field.default_factory()  # type: ignore[misc]
        else:
            kwargs["required"] = True
        if "default" in kwargs and tp is not bool and kwargs["default"] is not None:
            shown = " ".join(map(str, kwargs["default"])) if tp is list else kwargs["default"]
            kwargs["help"] += f" (default: {shown})"
        parser.add_argument(flag_name(field), dest=field.name, **kwargs)
        for alias in (aliases or {}).get(field.name, ()):
            parser.add_argument(alias, dest=field.name, help=argparse.SUPPRESS,
                                **{k: v for k, v in kwargs.items() if k not in ("help", "required", "default")})
