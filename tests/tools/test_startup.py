"""The data tools start without torch or megatron-core, and stay compatible with megatron-core."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_ixt.tokenizers.base import LegacyTokenizerBase

REPO = Path(__file__).resolve().parents[2]
DATA_TOOLS = ("preprocess_data", "train_tokenizer", "annotate_feedback", "merge_datasets", "checkpoint_info")


@pytest.mark.parametrize("tool", DATA_TOOLS)
def test_help_imports_neither_torch_nor_megatron_core(tool):
    # -X importtime prints one line per imported module: an exact list, not a timing guess.
    run = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "tools" / f"{tool}.py"), "--help"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage:" in run.stdout
    modules = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "argparse" in modules  # the probe sees imports at all
    assert not {"torch", "megatron.core", "httpx", "tqdm"} & modules
    assert "numpy" not in modules  # --help parses flags only: not even numpy


def _pair():
    from megatron.core.datasets.megatron_tokenizer import MegatronLegacyTokenizer

    def make(base):
        class Tok(base):
            def tokenize(self, text):
                return np.array([len(text)])

            vocab = property(lambda self: {})
            inv_vocab = property(lambda self: {})
            vocab_size = property(lambda self: 7)

        return Tok("a.model", "b.json", lowercase=True, extra_ids=3)

    return make(LegacyTokenizerBase), make(MegatronLegacyTokenizer)


def test_tokenizer_base_matches_megatron_core():
    ours, theirs = _pair()
    # Same identifiers: GPTDataset's cache hashes and unique descriptions do not change.
    assert ours.unique_identifiers == theirs.unique_identifiers
    assert ours.unique_description == theirs.unique_description
    public = lambda obj: {n for n in dir(type(obj)) if not n.startswith("_")}  # noqa: E731
    assert public(ours) == public(theirs)
    for name in ("cls", "sep", "pad", "eod", "bos", "eos", "mask"):
        for tok in (ours, theirs):
            with pytest.raises(NotImplementedError, match=name):
                getattr(tok, name)
    for tok in (ours, theirs):
        with pytest.raises(NotImplementedError, match="detokenize"):
            tok.detokenize([1])
        with pytest.raises(TypeError):  # abstract: tokenize must be defined
            type(tok).__mro__[1]()
