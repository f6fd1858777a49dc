"""Publishing finished datasets: written under temporary names, renamed into place when complete.

Preprocessing (`pipeline.py`) and the merge of SLURM shards (`merge.py`) both write their
output through a `StagedDatasets`:

1. a staging folder is made next to the output (hidden: `.<name>.XXXXXXXX.ixt-tmp`), so
   that the final renames stay on one file system and are atomic (`os.replace`);
2. every file of every output dataset (`.bin`, `.idx`, `.ixt.npy`, `.meta.json`; one set
   per json key), and the workers' temporary shards, are written there;
3. `publish` renames the datasets into place once all are complete, each `.idx` last:
   megatron-core opens a dataset by its `.bin` and `.idx` together, so a reader never sees
   a half-written set;
4. leaving the `with` block removes the staging folder and whatever is still in it, so a
   run that fails (bad input, full disk, Ctrl-C) leaves nothing behind.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
import tempfile
from typing import Iterable, Optional

from megatron_ixt.format.errors import OutputError
from megatron_ixt.format.indexed_io import (
    META_FILE_SUFFIX,
    ROLES_FILE_SUFFIX,
    SIDE_FILE_SUFFIX,
    DatasetWriter,
    write_metadata,
)

PUBLISH_ORDER = ((".bin", ROLES_FILE_SUFFIX, SIDE_FILE_SUFFIX, META_FILE_SUFFIX), (".idx",))
"""The files of a dataset in the order they are renamed into place: every dataset's `.idx` last
(the roles file exists for SFT datasets only)."""


def dataset_prefix(output_prefix: str, key: str) -> str:
    """`<output-prefix>_<key>_document`, as Megatron-LM's tools/preprocess_data.py names it."""
    return f"{output_prefix}_{key}_document"


def provenance(command: Optional[str] = None) -> dict:
    """When and by which command line a `.meta.json` was written."""
    if command is None:
        command = " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]) if sys.argv else ""
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }


class StagedDatasets:
    """The staging folder of the datasets of one `--output-prefix` (module docstring).

        with StagedDatasets(output_prefix) as staged:
            writer = staged.writer(prefix, dtype)   # ... writer.finalize()
            staged.write_metadata(prefix, meta)
            staged.publish([prefix])
    """

    def __init__(self, output_prefix: str):
        out_dir = os.path.dirname(os.path.abspath(output_prefix))
        try:
            os.makedirs(out_dir, exist_ok=True)
            self.folder = tempfile.mkdtemp(prefix=f".{os.path.basename(output_prefix)}.", suffix=".ixt-tmp",
                                           dir=out_dir)
        except OSError as error:
            raise OutputError(f"{out_dir}: cannot write to the output folder: {error.strerror}") from None

    def path(self, prefix: str, suffix: str) -> str:
        """Where the file `prefix + suffix` is written until it is published."""
        return os.path.join(self.folder, os.path.basename(prefix) + suffix)

    def writer(self, prefix: str, dtype, roles: bool = False) -> DatasetWriter:
        """A `DatasetWriter` of the `.bin`, `.idx` and side file of dataset `prefix`, and
        of its roles file with `roles` (SFT)."""
        return DatasetWriter(*(self.path(prefix, suffix) for suffix in (".bin", ".idx", SIDE_FILE_SUFFIX)),
                             dtype=dtype, roles_path=self.path(prefix, ROLES_FILE_SUFFIX) if roles else None)

    def write_metadata(self, prefix: str, meta: dict) -> None:
        write_metadata(self.path(prefix, META_FILE_SUFFIX), meta)

    def publish(self, prefixes: Iterable[str]) -> None:
        """Rename the complete datasets `prefixes` into place, every `.idx` last."""
        prefixes = list(prefixes)
        for suffixes in PUBLISH_ORDER:
            for prefix in prefixes:
                for suffix in suffixes:
                    if suffix == ROLES_FILE_SUFFIX and not os.path.exists(self.path(prefix, suffix)):
                        continue
                    os.replace(self.path(prefix, suffix), prefix + suffix)

    def discard(self) -> None:
        """Remove the staging folder with everything not published."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "StagedDatasets":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()
