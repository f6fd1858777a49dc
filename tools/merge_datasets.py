#!/usr/bin/env python
"""Merge preprocessed datasets (e.g. SLURM shards) into one, in constant memory. Example:

    python tools/merge_datasets.py --output-prefix data/corpus \
        data/corpus.shards/shard_00000 data/corpus.shards/shard_00001

writes data/corpus_<key>_document.{bin,idx,ixt.npy,meta.json}, byte for byte what one
tools/preprocess_data.py run over all the shards' inputs writes. The logic lives in
megatron_ixt.preprocess.merge (used by examples/slurm/preprocess_data.sbatch).
"""
import sys

from megatron_ixt.preprocess.merge import main

if __name__ == "__main__":
    sys.exit(main())
