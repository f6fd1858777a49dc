"""--no-mmap-bin-files (megatron-core's ``mmap_bin_files=False``, as Megatron-LM passes it):
every dataset kind built from the flags reads its .bin through megatron-core's file reader,
and gives the samples the memory map gives. (SFT datasets take the same config path;
tests/tokenizers/test_tiktoken.py trains a run with the flag.)"""

from __future__ import annotations

import shutil

import numpy as np
from megatron.core.datasets.indexed_dataset import _FileBinReader, _MMapBinReader

from megatron_ixt.config.cli import parse_config
from megatron_ixt.data.datasets import build_datasets
from megatron_ixt.tokenizers.build import build_tokenizer
from tests.launch import TINY


def _train_split(prefix: str, tokenizer_model: str, cache, *flags):
    cfg, _ = parse_config(["--config", str(TINY), "--data-path", prefix, "--split", "100,0,0", "--train-iters", "4",
                           "--eval-interval", 0, "--data-cache-path", str(cache), "--tokenizer-type",
                           "SentencePieceTokenizer", "--tokenizer-model", tokenizer_model, *flags])
    tokenizer = build_tokenizer("SentencePieceTokenizer", tokenizer_model)
    return build_datasets(cfg, tokenizer)[0]


def test_no_mmap_reads_the_same_samples(ixt_corpus, tmp_path):
    # The same tokens as a plain GPT dataset: no .ixt.npy side file, as Megatron-LM writes it.
    plain = str(tmp_path / "plain")
    for suffix in (".bin", ".idx"):
        shutil.copy(ixt_corpus["prefix"] + suffix, plain + suffix)
    for prefix, kind in ((ixt_corpus["prefix"], "IXTDataset"), (plain, "GPTDataset")):
        mapped = _train_split(prefix, ixt_corpus["tokenizer"], tmp_path / "cache")
        read = _train_split(prefix, ixt_corpus["tokenizer"], tmp_path / "cache", "--no-mmap-bin-files")
        assert type(read).__name__ == type(mapped).__name__ == kind
        low_level = lambda ds: getattr(ds.dataset, "indexed", ds.dataset)  # noqa: E731 - IXT wraps it
        assert isinstance(low_level(mapped).bin_reader, _MMapBinReader)
        assert isinstance(low_level(read).bin_reader, _FileBinReader)
        assert len(read) == len(mapped) >= 32
        for i in (0, 1, len(read) // 2, len(read) - 1):
            a, b = mapped[i], read[i]
            assert set(a) == set(b)
            for key in a:
                np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=f"{kind}[{i}] {key}")
