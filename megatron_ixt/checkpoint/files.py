"""The checkpoint folder on disk: names, the ``latest`` tracker, and the atomic steps.

Layout (Megatron-LM's)::

    <save>/iter_0000100/            model + optimizer shards, common.pt, metadata.json
    <save>/iter_0000100/config.yaml the resolved configuration the checkpoint was made with
    <save>/latest_checkpointed_iteration.txt

A save goes to ``iter_0000100.partial`` first. Only when every rank has written its shards
does rank 0 fsync the folder, rename it into place and then replace the ``latest`` marker
(itself written to a temporary file, fsynced and renamed): :func:`publish`. Re-saving an
iteration that exists (a resumed run that saves the iteration it loaded) first moves the old
folder aside to ``iter_0000100.old``, renames the new one into place, then deletes the old
one. A process killed at any point leaves a complete checkpoint where the marker points: the
next start removes leftover ``.partial`` folders, with a warning, and moves an ``.old``
folder back when its replacement never arrived.

Everything that writes a checkpoint (training's ``save.Saver``, the Hugging Face importer)
publishes it through :func:`publish`; everything that reads one finds it through
:func:`read_tracker` and :func:`checkpoint_path`.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Callable, Optional

import yaml

from megatron_ixt.config.cli import ConfigError
from megatron_ixt.runtime import lifecycle

logger = logging.getLogger("megatron_ixt")

TRACKER_FILE = "latest_checkpointed_iteration.txt"
PARTIAL_SUFFIX = ".partial"
OLD_SUFFIX = ".old"
# The resolved configuration, readable without torch (common.pt holds it too).
CONFIG_FILE = "config.yaml"
# A file-based prefix template is copied into each checkpoint folder under this name.
TEMPLATE_FILE = "prefix_template.yaml"


def _no_fault(point: str) -> None:
    pass


def checkpoint_name(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def checkpoint_path(root: str, iteration: int) -> str:
    """The folder of ``iteration``; its ``.old`` twin while an interrupted re-save of it
    has not been repaired yet (see :func:`replace_folder`)."""
    path = checkpoint_name(root, iteration)
    if not os.path.isdir(path) and os.path.isdir(path + OLD_SUFFIX):
        return path + OLD_SUFFIX
    return path


def partial_folder(root: str, iteration: int) -> str:
    """Where the shards of ``iteration`` are written before :func:`publish` moves them into place."""
    return checkpoint_name(root, iteration) + PARTIAL_SUFFIX


def read_tracker(root: str) -> Optional[int]:
    path = os.path.join(root, TRACKER_FILE)
    if not os.path.isfile(path):
        return None
    text = open(path).read().strip()
    if not text.isdigit():
        raise ConfigError(f"{path}: expected an iteration number, found {text!r}")
    return int(text)


def write_tracker(root: str, iteration: int, before_rename: Optional[Callable[[], None]] = None) -> None:
    """Point the ``latest`` marker at ``iteration``, atomically (a reader sees the old or the
    new number, never a torn file)."""
    write_atomic(os.path.join(root, TRACKER_FILE), f"{iteration}\n", before_rename=before_rename)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    for dirpath, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(dirpath)


def write_atomic(path: str, text: str, before_rename: Optional[Callable[[], None]] = None) -> None:
    """Write to a temporary file, fsync it, rename it over ``path``, fsync the folder.
    ``before_rename()`` is the fault-injection hook before the rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if before_rename:
        before_rename()
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def recover_interrupted_saves(root: str) -> list[str]:
    """Undo what an interrupted save left (rank 0 only): remove ``.partial`` folders; move
    an ``.old`` folder (an iteration being re-saved) back into place when its replacement
    never arrived, else remove it. Returns the names acted on. Not collective."""
    acted = []
    if not os.path.isdir(root):
        return acted
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.endswith(PARTIAL_SUFFIX):
            shutil.rmtree(path, ignore_errors=True)
            acted.append(name)
            logger.warning("removed incomplete checkpoint %s (a save was interrupted)", path)
        elif name.endswith(OLD_SUFFIX) and name.startswith("iter_"):
            final = path[:-len(OLD_SUFFIX)]
            if os.path.isdir(final):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.rename(path, final)
                fsync_dir(root)
                logger.warning("restored checkpoint %s (a re-save of it was interrupted)", final)
            acted.append(name)
    return acted


def clean_partial_checkpoints(root: str) -> list[str]:
    """Collective: rank 0 recovers from interrupted saves, then every rank waits for it.
    Only in a folder whose lock this process holds (``save.lock_save_folder``): elsewhere a
    ``.partial`` or ``.old`` folder may be a live run's save in flight."""
    import torch

    if torch.distributed.get_rank() == 0 and not lifecycle.holds_save_folder(root):
        raise RuntimeError(f"{root}: not locked by this run, so its interrupted saves are not its to repair")
    acted = recover_interrupted_saves(root) if torch.distributed.get_rank() == 0 else []
    torch.distributed.barrier()
    return acted


def replace_folder(new: str, final: str, fault: Callable[[str], None] = _no_fault) -> None:
    """Rename ``new`` to ``final``; an existing ``final`` is moved aside first and deleted
    only once the new folder is in place, so ``final`` is always complete or (briefly, and
    repaired by :func:`recover_interrupted_saves`) absent with its ``.old`` twin present.
    ``fault(point)`` is the fault-injection hook between the steps."""
    old = final + OLD_SUFFIX
    if os.path.isdir(final):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        fault("kill-after-aside")
    os.rename(new, final)
    fsync_dir(os.path.dirname(final) or ".")
    fault("kill-before-old-removed")
    shutil.rmtree(old, ignore_errors=True)


def publish(root: str, iteration: int, config: dict, template_source: str = "",
            fault: Callable[[str], None] = _no_fault) -> str:
    """One process (rank 0), once every shard of ``iteration`` is in its :func:`partial_folder`:
    add ``config.yaml`` (and the template file ``template_source``, when it is one), fsync the
    folder, move it into place, then point the tracker at it. Returns the final folder.
    ``fault(point)`` is the fault-injection hook between the steps."""
    final = checkpoint_name(root, iteration)
    partial = final + PARTIAL_SUFFIX
    with open(os.path.join(partial, CONFIG_FILE), "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    if os.path.isfile(template_source):  # a template file, not a built-in name
        shutil.copyfile(template_source, os.path.join(partial, TEMPLATE_FILE))
    fsync_tree(partial)
    replace_folder(partial, final, fault)
    fault("kill-after-rename")
    write_tracker(root, iteration, before_rename=lambda: fault("kill-before-tracker"))
    return final
