"""--tokenizer-type TikTokenizer: ids exactly Megatron-LM's `CustomTikTokenizer` (its real code,
loaded from the upstream source tarball) and megatron-core's `TikTokenTokenizer`; the
vocabulary cut, the refusals; and one pass through preprocessing, training, a checkpoint and
generation from that checkpoint alone.

The vocabulary is built here from OpenAI's GPT-2 merges (the `gpt2_files` fixture): the 256
bytes, then one token per merge, the first 3000 merges, in Megatron-LM's JSON format.
"""

from __future__ import annotations

import base64
import json
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest

from megatron_ixt.format.errors import TokenizerError
from megatron_ixt.format.special_tokens import FEEDBACK_CLOSE, FEEDBACK_OPEN
from megatron_ixt.tokenizers.build import build_tokenizer
from tests.launch import REPO, TINY, run_python, run_torchrun

pytest.importorskip("tiktoken", reason="pip install 'megatron_ixt[tiktoken]'")

UPSTREAM = REPO.parent / "shared" / "reference" / "upstream" / "Megatron-LM-core_v0.16.1.tar.gz"
MERGES = 3000
TEXTS = [
    "Hello world! def f(x):\n    return x ** 2  # square\n\n\n",
    "The quick brown fox jumps over the lazy dog. 12345 caf\u00e9 \u4e2d\u6587 \U0001f600 na\u00efve",
    "  leading spaces, trailing spaces  \n\r\n\tTABS\tand CamelCaseWords / paths/like/this\n",
    "",
]


def _gpt2_bytes_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character -> byte (its `bytes_to_unicode`, inverted)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


@pytest.fixture(scope="module")
def vocab_json(gpt2_files, tmp_path_factory) -> str:
    byte_of = _gpt2_bytes_decoder()
    lines = Path(gpt2_files[1]).read_text(encoding="utf-8").splitlines()[1:MERGES + 1]
    tokens = [bytes([i]) for i in range(256)]
    tokens += [bytes(byte_of[c] for c in left + right) for left, right in (line.split() for line in lines)]
    path = tmp_path_factory.mktemp("tiktoken") / "vocab.json"
    path.write_text(json.dumps([{"rank": i, "token_bytes": base64.b64encode(t).decode(),
                                 "token_str": t.decode("utf-8", errors="replace")} for i, t in enumerate(tokens)]))
    return str(path)


def _megatron_lm_class(monkeypatch):
    """Megatron-LM's `CustomTikTokenizer` from the source tarball, with what its module imports
    besides megatron-core (BERT/GPT-2/multimodal/SFT tokenizers, `print_rank_0`) stubbed;
    None without the tarball."""
    if not UPSTREAM.is_file():
        return None
    with tarfile.open(UPSTREAM) as tar:
        source = tar.extractfile("Megatron-LM-core_v0.16.1/megatron/training/tokenizer/tokenizer.py").read()
    package = "megatron.training.tokenizer"
    stubs = {"megatron.training": {"print_rank_0": lambda *a, **k: None},
             "megatron.training.utils": {"print_rank_0": lambda *a, **k: None}, package: {},
             f"{package}.bert_tokenization": {"FullTokenizer": None},
             f"{package}.gpt2_tokenization": {"GPT2Tokenizer": None},
             f"{package}.multimodal_tokenizer": {"MultimodalTokenizer": None},
             f"{package}.sft_tokenizer": {"SFTTokenizer": None}}
    for name, attributes in stubs.items():
        stub = types.ModuleType(name)
        stub.__dict__.update(attributes, __path__=[])
        monkeypatch.setitem(sys.modules, name, stub)
    module = types.ModuleType(f"{package}.tokenizer")
    module.__package__ = package
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source, "megatron/training/tokenizer/tokenizer.py", "exec"), module.__dict__)
    return module


def test_ids_are_megatron_lms(vocab_json, stdlib_texts, monkeypatch):
    from megatron.core.tokenizers.text.libraries.tiktoken_tokenizer import TikTokenTokenizer

    upstream = _megatron_lm_class(monkeypatch)
    texts = TEXTS + stdlib_texts[::200]
    ranks = 256 + MERGES
    for pattern, vocab_size, specials in (("v2", None, None), ("v1", None, None),
                                          ("v2", 1000 + 2000, ["<unk>", "<s>", "</s>", "<pad>"])):
        ours = build_tokenizer("TikTokenizer", vocab_json, vocab_size=vocab_size, tiktoken_pattern=pattern,
                               tiktoken_special_tokens=specials)
        size = vocab_size or 1000 + ranks
        # megatron-core's (Megatron-LM's default, non-legacy path): same ids for text without special strings.
        core = TikTokenTokenizer(vocab_json, pattern=pattern, vocab_size=size,
                                 special_tokens=[*(specials or ["<unk>", "<s>", "</s>"]), "<mask>", "<cls>", "<sep>",
                                                 *([] if specials else ["<pad>"])])
        for text in texts:
            ids = ours.tokenize(text)
            assert ids == core.text_to_ids(text)
            assert ours.detokenize(ids) == text
            assert min(ids, default=1000) >= 1000 and max(ids, default=0) < size
        assert [list(a) for a in ours.tokenize_batch(texts)] == [ours.tokenize(t) for t in texts]
        assert (ours.eod, ours.bos, ours.vocab_size) == (core.eod, core.bos_id, core.vocab_size) == (2, 1, size)
        if upstream is not None:
            reference = upstream.CustomTikTokenizer(vocab_json, upstream.PATTERN_TIKTOKEN if pattern == "v1"
                                                    else upstream.PATTERN_TIKTOKEN_V2, size, 1000, specials)
            for text in texts + ["</s> and <s> are text here", "\u00e9\u00e9\u00e9"]:
                ids = ours.tokenize(text)
                assert ids == reference.tokenize(text)
                assert ours.offsets(ids, text) == reference.offsets(ids, text)
            assert (ours.eod, ours.bos, ours.vocab_size) == (reference.eod, reference.bos, reference.vocab_size)
            assert ours.unique_identifiers["pattern"] == reference.unique_identifiers["pattern"]
    assert ours.pad == 3
    # The feedback delimiters: the last two reserved ids, never produced from text.
    assert (ours.feedback_open_id, ours.feedback_close_id, ours.delimiter_source) == (998, 999, "reserved")
    assert not {998, 999} & set(ours.tokenize(FEEDBACK_OPEN + "x" + FEEDBACK_CLOSE))
    assert ours.detokenize([998, *ours.tokenize("x"), 999]) == FEEDBACK_OPEN + "x" + FEEDBACK_CLOSE
    ids, starts = ours.encode_with_offsets("caf\u00e9 \u4e2d\u6587")
    assert ours.detokenize(ids) == "caf\u00e9 \u4e2d\u6587" and starts[0] == 0 and starts == sorted(starts)


def test_special_tokens_and_refusals(vocab_json, tmp_path, monkeypatch):
    named = build_tokenizer("TikTokenizer", vocab_json, tiktoken_pattern="v2", tiktoken_num_special_tokens=5,
                            tiktoken_special_tokens=["<unk>", "<s>", "</s>", FEEDBACK_OPEN, FEEDBACK_CLOSE])
    assert (named.feedback_open_id, named.feedback_close_id, named.delimiter_source) == (3, 4, "builtin")
    full = build_tokenizer("TikTokenizer", vocab_json, tiktoken_pattern="v1", tiktoken_num_special_tokens=3)
    assert (full.feedback_open_id, full.vocab_size, full.delimiter_source) == (3 + 3256, 3 + 3256 + 2, "appended")
    assert full.tokenize("hello world") == [i - 2 for i in named.tokenize("hello world")]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"rank": 0, "token_bytes": "AA=="}]))
    for kwargs, message in (
        ({"tokenizer_model": vocab_json}, "TikTokenizer needs --tiktoken-pattern (v1 or v2)"),
        ({"tokenizer_model": str(bad), "tiktoken_pattern": "v2"}, "bad.json entry 0: expected {rank: 0"),
        ({"tokenizer_model": vocab_json, "tiktoken_pattern": "v2", "vocab_size": 9000}, "needs 8000 ranks"),
        ({"tokenizer_model": vocab_json, "tiktoken_pattern": "v2", "tiktoken_special_tokens": ["<s>", "</s>"]},
         "must include <unk> <s> </s> (missing <unk>)"),
        ({"tokenizer_model": vocab_json, "tiktoken_pattern": "v2",
          "tiktoken_special_tokens": ["<unk>", "<s>", "</s>", FEEDBACK_OPEN]}, "give both or neither"),
    ):
        with pytest.raises(TokenizerError, match=message.replace("(", r"\(").replace(")", r"\)")):
            build_tokenizer("TikTokenizer", **kwargs)
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # not installed: the extra to install
    with pytest.raises(TokenizerError, match=r"needs the tiktoken package: pip install 'megatron_ixt\[tiktoken\]'"):
        build_tokenizer("TikTokenizer", vocab_json, tiktoken_pattern="v2")


def test_config_rules():
    from megatron_ixt.config.cli import ConfigError, parse_config
    from megatron_ixt.config.validate import validate

    cfg, _ = parse_config(["--config", str(TINY), "--mock-data", "--tokenizer-type", "TikTokenizer",
                           "--tokenizer-model", "v.json"])
    with pytest.raises(ConfigError, match="TikTokenizer needs --tiktoken-pattern v1 or v2"):
        validate(cfg, 1, cuda=False)
    # Megatron-LM's Llama 3 example: --tiktoken-pattern v2 with the NullTokenizer of mock data.
    cfg, _ = parse_config(["--config", str(TINY), "--mock-data", "--tiktoken-pattern", "v2"])
    validate(cfg, 1, cuda=False)


def test_preprocess_train_and_generate_from_the_checkpoint(vocab_json, stdlib_texts, tmp_path, run_preprocess_tool):
    """The dataset holds exactly the tokenizer's ids; a run trains on it and saves; generation
    rebuilds the tokenizer from the checkpoint alone (its json and pattern recorded)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_ixt.evaluation.engine import config_from_checkpoint
    from megatron_ixt.tokenizers.build import tokenizer_from_config

    texts = stdlib_texts[:60]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    flags = ["--tokenizer-type", "TikTokenizer", "--tokenizer-model", vocab_json, "--tiktoken-pattern", "v1"]
    run = run_preprocess_tool("--input", tmp_path / "docs.jsonl", "--output-prefix", tmp_path / "ds", *flags,
                              "--append-eod", "--prefix-template", "none")
    assert run.returncode == 0, run.output
    tokenizer = build_tokenizer("TikTokenizer", vocab_json, tiktoken_pattern="v1")
    dataset = IndexedDataset(str(tmp_path / "ds_text_document"))
    assert [dataset[i].tolist() for i in range(len(dataset))] == [tokenizer.tokenize(t) + [2] for t in texts]
    assert dataset[0].dtype == np.uint16
    meta = json.loads((tmp_path / "ds_text_document.meta.json").read_text())["tokenizer"]
    assert (meta["type"], meta["tiktoken_pattern"], meta["vocab_size"]) == ("TikTokenizer", "v1", 4256)

    save = tmp_path / "ckpt"
    # tiny.yaml's --vocab-size is its NullTokenizer's; for a TikTokenizer it would cut the vocabulary.
    run_torchrun(1, "pretrain_ixt.py", [
        "--config", TINY, *flags, "--vocab-size", 1000 + 256 + MERGES, "--data-path", tmp_path / "ds_text_document",
        "--split", "100,0,0",
        "--train-iters", 2, "--eval-interval", 0, "--lr-warmup-iters", 0, "--num-layers", 2,
        "--data-cache-path", tmp_path / "cache", "--save", save, "--no-mmap-bin-files"])
    cfg = config_from_checkpoint(str(save))
    assert (cfg.tokenizer.tiktoken_pattern, cfg.data.mmap_bin_files) == ("v1", False)
    assert tokenizer_from_config(cfg.tokenizer).tokenize(texts[0]) == tokenizer.tokenize(texts[0])
    proc = run_python("tools/generate.py", ["--load", save, "--prompt", "def f(x):", "--greedy",
                                            "--max-new-tokens", 4])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[prompt] def f(x):" in proc.stdout and "[output]" in proc.stdout
    proc = run_python("tools/convert_checkpoint.py", ["--to", "hf", "--load", save, "--output", tmp_path / "hf"])
    assert proc.returncode != 0 and not (tmp_path / "hf").exists()
    assert "Hugging Face export of a TikTokenizer model is not supported" in proc.stderr.strip().splitlines()[-1]
