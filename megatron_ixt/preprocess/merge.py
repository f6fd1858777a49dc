"""Merge preprocessed datasets (SLURM shards) into one, in constant memory.

    python tools/merge_datasets.py --output-prefix data/corpus \\
        data/corpus.shards/shard_00000 data/corpus.shards/shard_00001 ...

Each shard is the --output-prefix one run of tools/preprocess_data.py was given. For every
json key this writes ``<output-prefix>_<key>_document.{bin,idx,ixt.npy,meta.json}``: the
shards' sequences back to back, in the order given. Merging the shards of files A, B gives
the same .bin, .idx and .ixt.npy bytes as preprocessing ``--input A,B`` at once (and as
megatron-core's ``IndexedDatasetBuilder.add_index`` would; tests/data/test_indexed_io.py
checks both).

There is one writer: `indexed_io.DatasetWriter`, the one preprocessing uses. A shard is
appended through memory maps of its files (`DatasetWriter.append_dataset`): the `.bin`
with `os.sendfile`, the index and side file in pieces of a million entries. Memory stays
constant whatever the number of documents, where `IndexedDatasetBuilder.add_index` keeps
every sequence length and pointer of the merged dataset as Python integers.

Shards must agree on everything that decides token ids and side-file values (tokenizer,
prefix template, quality thresholds...): the merge refuses shards that do not.
``--quality-thresholds quantile`` computes cut points per shard, so such shards cannot be
merged; preprocess shards with fixed thresholds. Like preprocessing, the merge writes
through `publish.StagedDatasets`: under a staging folder, renamed into place when every
json key is complete, each .idx last, so a reader never sees a half-written dataset; on an
error nothing is left behind.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

from megatron_ixt.config.flags import add_dataclass_arguments, dataclass_values
from megatron_ixt.config.schema import arg, required
from megatron_ixt.format.errors import DataError
from megatron_ixt.runtime.progress import format_duration

if TYPE_CHECKING:
    from megatron_ixt.preprocess.publish import StagedDatasets

# numpy (indexed_io, publish) is imported inside the functions: `--help` does not need it.

logger = logging.getLogger(__name__)

MUST_AGREE = ("format", "json_key", "json_keys", "tokenizer", "template", "feedback_key", "score_scale",
              "quality_thresholds", "append_eod", "prepend_bos", "sft")
"""Metadata fields that must be equal in every shard: they decide token ids and side-file values."""


@dataclass
class MergeConfig:
    """The flags of tools/merge_datasets.py (its operands, the shards, follow them)."""

    output_prefix: str = required("prefix of the merged dataset")
    expected_shards: Optional[int] = arg(None, "refuse to merge unless there are this many")


def json_keys_of(shard_prefix: str) -> list[str]:
    from megatron_ixt.format.indexed_io import META_FILE_SUFFIX, read_metadata
    metas = sorted(glob.glob(glob.escape(shard_prefix) + "_*_document" + META_FILE_SUFFIX))
    if not metas:
        raise DataError(f"{shard_prefix}: no *_document{META_FILE_SUFFIX} found "
                        "(is this the --output-prefix of a finished preprocessing run?)")
    return read_metadata(metas[0][:-len(META_FILE_SUFFIX)])["json_keys"]


def merged_metadata(metas: list[dict], shard_prefixes: Sequence[str], command: Optional[str]) -> dict:
    """The first shard's metadata, with counts summed over all shards."""
    from megatron_ixt.preprocess.publish import provenance
    merged = dict(metas[0])
    counts = {k: 0 for k, v in metas[0]["counts"].items() if isinstance(v, int)}
    per_level: dict[str, int] = {}
    for meta in metas:
        for k in counts:
            counts[k] += meta["counts"][k]
        for level, n in meta["counts"]["documents_per_level"].items():
            per_level[level] = per_level.get(level, 0) + n
    counts["documents_per_level"] = per_level
    counts["annotated_fraction"] = counts["annotated_documents"] / counts["documents"] if counts["documents"] else 0.0
    merged.update({
        **provenance(command),
        "inputs": [i for meta in metas for i in meta["inputs"]],
        "counts": counts,
        "skipped": [s for meta in metas for s in meta["skipped"]],
        "elapsed_s": round(sum(meta["elapsed_s"] for meta in metas), 3),
        "merged_from": [os.path.abspath(p) for p in shard_prefixes],
    })
    return merged


def _merge_key(shards: list[str], out: str, staged: StagedDatasets, command: Optional[str]) -> dict:
    from megatron_ixt.format.indexed_io import read_metadata
    metas = [read_metadata(p) for p in shards]
    for p, meta in zip(shards[1:], metas[1:]):
        differ = [f for f in MUST_AGREE if meta.get(f) != metas[0].get(f)]
        if differ:
            raise DataError(f"{p} differs from {shards[0]} in {', '.join(differ)}; shards must be preprocessed "
                            "with the same tokenizer and flags (and --quality-thresholds fixed)")
    # SFT shards carry a roles file (and record "sft" in their metadata, which must agree).
    writer = staged.writer(out, metas[0]["tokenizer"]["dtype"], roles=bool(metas[0].get("sft")))
    try:
        for i, p in enumerate(shards, 1):
            try:
                writer.append_dataset(p)
            except (ValueError, FileNotFoundError) as error:
                raise DataError(str(error)) from None
            if i % 100 == 0 or i == len(shards):
                logger.info(f"  {out}: appended {i}/{len(shards)} shards ({writer.num_documents} documents)")
        writer.finalize()
    finally:
        writer.close()
    meta = merged_metadata(metas, shards, command)
    staged.write_metadata(out, meta)
    return meta


def merge_datasets(shard_prefixes: Sequence[str], output_prefix: str,
                   command: Optional[str] = None) -> dict[str, dict]:
    """Merge the preprocessing outputs `shard_prefixes` (each run's --output-prefix), in
    order, into `output_prefix`; returns each json key's metadata. `DataError` on shards
    that are missing, damaged or preprocessed differently; then nothing is written."""
    from megatron_ixt.preprocess.publish import StagedDatasets, dataset_prefix
    if not shard_prefixes:
        raise DataError("no shards to merge")
    keys = json_keys_of(shard_prefixes[0])
    missing = [dataset_prefix(s, k) + ".idx" for s in shard_prefixes for k in keys
               if not os.path.isfile(dataset_prefix(s, k) + ".idx")]
    if missing:
        raise DataError(f"missing {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''} "
                        "(did a preprocessing task fail?)")
    outs = {key: dataset_prefix(output_prefix, key) for key in keys}
    with StagedDatasets(output_prefix) as staged:
        metas = {key: _merge_key([dataset_prefix(s, key) for s in shard_prefixes], out, staged, command)
                 for key, out in outs.items()}
        staged.publish(outs.values())
    return metas


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="merge_datasets.py", description=__doc__.split("\n\n")[0])
    add_dataclass_arguments(parser, MergeConfig)
    # Operands, not flags: the generator makes only flags.
    parser.add_argument("shards", nargs="+", help="the --output-prefix of each shard, in order")
    return parser


def parse_config(argv: Optional[list[str]] = None) -> tuple[MergeConfig, list[str]]:
    """The flags and the shards of the command line (exits 2 on a usage error)."""
    args = build_parser().parse_args(argv)
    return dataclass_values(args, MergeConfig), args.shards


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of tools/merge_datasets.py; returns the exit status."""
    config, shards = parse_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if config.expected_shards is not None and len(shards) != config.expected_shards:
        print(f"merge_datasets.py: error: {len(shards)} shards given, {config.expected_shards} expected "
              "(did a preprocessing task fail?)", file=sys.stderr)
        return 1
    from megatron_ixt.preprocess.publish import dataset_prefix
    start = time.perf_counter()
    try:
        metas = merge_datasets(shards, config.output_prefix)
    except (DataError, OSError) as error:
        print(f"merge_datasets.py: error: {error}", file=sys.stderr)
        print("No output was written.", file=sys.stderr)
        return 1
    for key, meta in metas.items():
        c = meta["counts"]
        print(f"merged {len(shards)} shards into {dataset_prefix(config.output_prefix, key)}: "
              f"{c['documents']} documents, {c['sequences']} sequences, {c['tokens']} tokens "
              f"in {format_duration(time.perf_counter() - start)}")
    return 0
