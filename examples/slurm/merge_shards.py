#!/usr/bin/env python
"""Merge datasets that tools/preprocess_data.py wrote shard by shard into one dataset.

    python examples/slurm/merge_shards.py --output-prefix data/corpus \\
        data/corpus.shards/shard_00000 data/corpus.shards/shard_00001 ...

Each argument is the --output-prefix one preprocessing run was given. For every json key
it writes ``<output-prefix>_<key>_document.{bin,idx,ixt.npy,meta.json}``: the shards'
sequences back to back, in the order of the arguments. Merging the shards of files A, B
gives the same .bin, .idx and .ixt.npy bytes as preprocessing ``--input A,B`` at once.

The .bin/.idx merge is megatron-core's ``IndexedDatasetBuilder.add_index``; the side file
and metadata use megatron_ixt's readers and writers. Shards must agree on everything that
decides token ids and side-file values (tokenizer, prefix template, quality thresholds...):
the merge refuses shards that do not. ``--quality-thresholds quantile`` computes cut points
per shard, so such shards cannot be merged; preprocess shards with fixed thresholds.

Used by the ``merge`` step of examples/slurm/preprocess_data.sbatch. Like the
preprocessing tool, it writes under temporary names and renames the .idx last, so a
reader never sees a half-written dataset.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

import numpy as np  # noqa: E402
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder  # noqa: E402

from megatron_ixt.data.indexed_io import (  # noqa: E402
    META_FILE_SUFFIX, SIDE_FILE_SUFFIX, read_metadata, read_side_file, write_side_file)

# Metadata fields that must be equal in every shard: they decide token ids and side-file values.
MUST_AGREE = ("format", "json_key", "json_keys", "tokenizer", "template", "feedback_key", "score_scale",
              "quality_thresholds", "append_eod")
TMP = ".merge-tmp"


def dataset_prefix(output_prefix: str, key: str) -> str:
    return f"{output_prefix}_{key}_document"  # tools/preprocess_data.py's naming


def json_keys_of(shard_prefix: str) -> list[str]:
    metas = sorted(glob.glob(glob.escape(shard_prefix) + "_*_document" + META_FILE_SUFFIX))
    if not metas:
        sys.exit(f"merge_shards.py: error: {shard_prefix}: no *_document{META_FILE_SUFFIX} found "
                 "(is this the --output-prefix of a finished preprocessing run?)")
    with open(metas[0], encoding="utf-8") as f:
        return json.load(f)["json_keys"]


def merged_metadata(metas: list[dict], shard_prefixes: list[str]) -> dict:
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
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "inputs": [i for meta in metas for i in meta["inputs"]],
        "counts": counts,
        "skipped": [s for meta in metas for s in meta["skipped"]],
        "elapsed_s": round(sum(meta["elapsed_s"] for meta in metas), 3),
        "merged_from": [os.path.abspath(p) for p in shard_prefixes],
    })
    return merged


def merge_key(shards: list[str], out: str) -> dict:
    """Merge the datasets ``shards`` (dataset prefixes) into ``out``; returns its metadata."""
    metas = [read_metadata(p) for p in shards]
    for p, meta in zip(shards[1:], metas[1:]):
        differ = [f for f in MUST_AGREE if meta.get(f) != metas[0].get(f)]
        if differ:
            sys.exit(f"merge_shards.py: error: {p} differs from {shards[0]} in {', '.join(differ)}; "
                     "shards must be preprocessed with the same tokenizer and flags "
                     "(and --quality-thresholds fixed)")
    dtype = np.dtype(metas[0]["tokenizer"]["dtype"]).type
    builder = IndexedDatasetBuilder(out + ".bin" + TMP, dtype=dtype)
    sides = []
    for p in shards:
        builder.add_index(p)
        side = read_side_file(p)
        if len(side) != len(IndexedDataset(p).sequence_lengths):
            sys.exit(f"merge_shards.py: error: {p}{SIDE_FILE_SUFFIX} has {len(side)} rows, "
                     "not one per sequence of its .idx")
        sides.append(side)
    builder.finalize(out + ".idx" + TMP)
    write_side_file(out + SIDE_FILE_SUFFIX + TMP, sides, sum(len(s) for s in sides))
    meta = merged_metadata(metas, shards)
    with open(out + META_FILE_SUFFIX + TMP, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    # The .idx last: megatron-core needs both files, so a reader never sees half a dataset.
    for suffix in (".bin", SIDE_FILE_SUFFIX, META_FILE_SUFFIX, ".idx"):
        os.replace(out + suffix + TMP, out + suffix)
    return meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-prefix", required=True, help="prefix of the merged dataset")
    parser.add_argument("--expected-shards", type=int, help="refuse to merge unless there are this many")
    parser.add_argument("shards", nargs="+", help="the --output-prefix of each shard, in order")
    args = parser.parse_args(argv)
    if args.expected_shards is not None and len(args.shards) != args.expected_shards:
        sys.exit(f"merge_shards.py: error: {len(args.shards)} shards found, {args.expected_shards} expected "
                 "(did a preprocessing task fail?)")
    keys = json_keys_of(args.shards[0])
    missing = [dataset_prefix(s, k) + ".idx" for s in args.shards for k in keys
               if not os.path.isfile(dataset_prefix(s, k) + ".idx")]
    if missing:
        sys.exit(f"merge_shards.py: error: missing {', '.join(missing)} (did a preprocessing task fail?)")
    os.makedirs(os.path.dirname(os.path.abspath(args.output_prefix)), exist_ok=True)
    for key in keys:
        out = dataset_prefix(args.output_prefix, key)
        try:
            meta = merge_key([dataset_prefix(s, key) for s in args.shards], out)
        except BaseException:
            for suffix in (".bin", ".idx", SIDE_FILE_SUFFIX, META_FILE_SUFFIX):
                if os.path.exists(out + suffix + TMP):
                    os.remove(out + suffix + TMP)  # no half-written files left behind
            raise
        c = meta["counts"]
        print(f"merged {len(args.shards)} shards into {out}: {c['documents']} documents, "
              f"{c['sequences']} sequences, {c['tokens']} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
