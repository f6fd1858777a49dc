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
under temporary names and renames each .idx last, so a reader never sees a half-written
dataset; on an error nothing is left behind.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import logging
import os
import sys
import time
from typing import Optional, Sequence

from megatron_ixt.format.errors import DataError
from megatron_ixt.runtime.progress import format_duration

logger = logging.getLogger(__name__)

MUST_AGREE = ("format", "json_key", "json_keys", "tokenizer", "template", "feedback_key", "score_scale",
              "quality_thresholds", "append_eod")
"""Metadata fields that must be equal in every shard: they decide token ids and side-file values."""
TMP = ".merge-tmp"


def dataset_prefix(output_prefix: str, key: str) -> str:
    """`<output-prefix>_<key>_document`, as tools/preprocess_data.py names it."""
    return f"{output_prefix}_{key}_document"


def json_keys_of(shard_prefix: str) -> list[str]:
    from megatron_ixt.format.indexed_io import META_FILE_SUFFIX
    metas = sorted(glob.glob(glob.escape(shard_prefix) + "_*_document" + META_FILE_SUFFIX))
    if not metas:
        raise DataError(f"{shard_prefix}: no *_document{META_FILE_SUFFIX} found "
                        "(is this the --output-prefix of a finished preprocessing run?)")
    with open(metas[0], encoding="utf-8") as f:
        return json.load(f)["json_keys"]


def merged_metadata(metas: list[dict], shard_prefixes: Sequence[str], command: str) -> dict:
    """The first shard's metadata, with counts summed over all shards."""
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
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "inputs": [i for meta in metas for i in meta["inputs"]],
        "counts": counts,
        "skipped": [s for meta in metas for s in meta["skipped"]],
        "elapsed_s": round(sum(meta["elapsed_s"] for meta in metas), 3),
        "merged_from": [os.path.abspath(p) for p in shard_prefixes],
    })
    return merged


def _merge_key(shards: list[str], out: str, command: str) -> dict:
    from megatron_ixt.format.indexed_io import META_FILE_SUFFIX, SIDE_FILE_SUFFIX, DatasetWriter, read_metadata
    metas = [read_metadata(p) for p in shards]
    for p, meta in zip(shards[1:], metas[1:]):
        differ = [f for f in MUST_AGREE if meta.get(f) != metas[0].get(f)]
        if differ:
            raise DataError(f"{p} differs from {shards[0]} in {', '.join(differ)}; shards must be preprocessed "
                            "with the same tokenizer and flags (and --quality-thresholds fixed)")
    writer = DatasetWriter(out + ".bin" + TMP, out + ".idx" + TMP, out + SIDE_FILE_SUFFIX + TMP,
                           metas[0]["tokenizer"]["dtype"])
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
    with open(out + META_FILE_SUFFIX + TMP, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return meta


def merge_datasets(shard_prefixes: Sequence[str], output_prefix: str,
                   command: Optional[str] = None) -> dict[str, dict]:
    """Merge the preprocessing outputs `shard_prefixes` (each run's --output-prefix), in
    order, into `output_prefix`; returns each json key's metadata. `DataError` on shards
    that are missing, damaged or preprocessed differently; then nothing is written."""
    # Imported here (and in the helpers): numpy is not needed for `--help`.
    from megatron_ixt.format.indexed_io import META_FILE_SUFFIX, SIDE_FILE_SUFFIX
    if not shard_prefixes:
        raise DataError("no shards to merge")
    command = command if command is not None else " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])
    keys = json_keys_of(shard_prefixes[0])
    missing = [dataset_prefix(s, k) + ".idx" for s in shard_prefixes for k in keys
               if not os.path.isfile(dataset_prefix(s, k) + ".idx")]
    if missing:
        raise DataError(f"missing {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''} "
                        "(did a preprocessing task fail?)")
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    outs = {key: dataset_prefix(output_prefix, key) for key in keys}
    metas = {}
    try:
        for key, out in outs.items():
            metas[key] = _merge_key([dataset_prefix(s, key) for s in shard_prefixes], out, command)
    except BaseException:
        for out in outs.values():
            for suffix in (".bin", ".idx", SIDE_FILE_SUFFIX, META_FILE_SUFFIX):
                if os.path.exists(out + suffix + TMP):
                    os.remove(out + suffix + TMP)  # no half-written files left behind
        raise
    # Every key complete: rename, each .idx last (megatron-core needs .bin and .idx together).
    for suffixes in ((".bin", SIDE_FILE_SUFFIX, META_FILE_SUFFIX), (".idx",)):
        for out in outs.values():
            for suffix in suffixes:
                os.replace(out + suffix + TMP, out + suffix)
    return metas


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of tools/merge_datasets.py; returns the exit status."""
    parser = argparse.ArgumentParser(prog="merge_datasets.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-prefix", required=True, help="prefix of the merged dataset")
    parser.add_argument("--expected-shards", type=int, help="refuse to merge unless there are this many")
    parser.add_argument("shards", nargs="+", help="the --output-prefix of each shard, in order")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.expected_shards is not None and len(args.shards) != args.expected_shards:
        print(f"merge_datasets.py: error: {len(args.shards)} shards given, {args.expected_shards} expected "
              "(did a preprocessing task fail?)", file=sys.stderr)
        return 1
    start = time.perf_counter()
    try:
        metas = merge_datasets(args.shards, args.output_prefix)
    except (DataError, OSError) as error:
        print(f"merge_datasets.py: error: {error}", file=sys.stderr)
        print("No output was written.", file=sys.stderr)
        return 1
    for key, meta in metas.items():
        c = meta["counts"]
        print(f"merged {len(args.shards)} shards into {dataset_prefix(args.output_prefix, key)}: "
              f"{c['documents']} documents, {c['sequences']} sequences, {c['tokens']} tokens "
              f"in {format_duration(time.perf_counter() - start)}")
    return 0
