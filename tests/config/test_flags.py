"""The one typed flag generator (config/flags.py) and the flags shared across the data tools."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Optional

import pytest

from megatron_ixt.config.flags import add_dataclass_arguments
from megatron_ixt.config.schema import arg
from megatron_ixt.format.prefixes import DEFAULT_PREFIX_TEMPLATE
from megatron_ixt.preprocess.config import PreprocessConfig, build_parser, parse_config


@dataclass
class _Example:
    name: str = dataclasses.field(metadata={"help": "required"})
    ratio: float = arg(0.5, "a float stays a float")
    limit: Optional[int] = arg(None, "optional int")
    keys: list = arg(["text"], "a list")
    mode: str = arg("a", "with choices", choices=("a", "b"))
    on: bool = arg(False, "a switch")


def test_generator_types_fields_from_their_annotations():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, _Example, aliases={"limit": ("--max",)})
    args = parser.parse_args(["--name", "x", "--ratio", "0.25", "--max", "3", "--keys", "a", "b", "--on"])
    assert args.ratio == 0.25 and isinstance(args.ratio, float)
    assert (args.limit, args.keys, args.mode, args.on) == (3, ["a", "b"], "a", True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "x", "--mode", "c"])
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --name is required
    assert "--max" not in parser.format_help()  # an old spelling works but is not advertised


def test_preprocess_flags_are_the_dataclass():
    parser = build_parser()
    defaults = vars(parser.parse_args(["--input", "a", "--output-prefix", "b", "--tokenizer-type", "NullTokenizer"]))
    for field in dataclasses.fields(PreprocessConfig):
        if field.default is not dataclasses.MISSING:
            assert defaults[field.name] == field.default, field.name
    assert defaults["json_keys"] == ["text"] and defaults["prefix_template"] == DEFAULT_PREFIX_TEMPLATE
    config = parse_config(["--input", "a", "--output-prefix", "b", "--tokenizer-type", "NullTokenizer",
                           "--vocab-size", "100", "--workers", "3"])
    assert (config.tokenizer.vocab_size, config.workers) == (100, 3)


def test_train_tokenizer_takes_the_shared_flag_names_and_the_old_ones(tmp_path, monkeypatch):
    from megatron_ixt.tokenizers import training as tokenizer_training

    seen = {}

    def fake_train(inputs, prefix, vocab, model_type, json_keys, max_docs, *rest):
        seen.update(json_keys=json_keys, max_docs=max_docs)
        return prefix + ".model"

    monkeypatch.setattr(tokenizer_training, "train_sentencepiece", fake_train)
    common = ["--input", "x.jsonl", "--model-prefix", str(tmp_path / "m"), "--vocab-size", "100"]
    assert tokenizer_training.main(common + ["--json-keys", "code", "text", "--max-docs", "5"]) == 0
    assert seen == {"json_keys": ["code", "text"], "max_docs": 5}
    assert tokenizer_training.main(common + ["--json-key", "code", "--max-documents", "7"]) == 0
    assert seen == {"json_keys": ["code"], "max_docs": 7}


def test_generator_narrows_a_shared_class_for_one_tool():
    from megatron_ixt.config.schema import ParallelConfig, TokenizerConfig

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, ParallelConfig, fields=("tensor_model_parallel_size",))
    add_dataclass_arguments(parser, TokenizerConfig, fields=("tokenizer_type", "vocab_file"),
                            defaults={"tokenizer_type": None}, helps={"vocab_file": "theirs"},
                            required=("vocab_file",))
    args = parser.parse_args(["--vocab-file", "v.json"])
    assert vars(args) == {"tensor_model_parallel_size": 1, "tokenizer_type": None, "vocab_file": "v.json"}
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --vocab-file made required
    with pytest.raises(SystemExit):
        parser.parse_args(["--vocab-file", "v", "--tokenizer-type", "Tiktoken"])  # the class's choices stay
    assert "theirs" in parser.format_help() and "--pipeline-model-parallel-size" not in parser.format_help()


def test_preprocess_takes_the_training_tokenizer_fields():
    config = parse_config(["--input", "a", "--output-prefix", "b", "--tokenizer-type", "GPT2BPETokenizer",
                           "--vocab-file", "v.json", "--merge-file", "m.bpe"])
    assert (config.tokenizer.tokenizer_type, config.tokenizer.vocab_file, config.tokenizer.merge_file) == (
        "GPT2BPETokenizer", "v.json", "m.bpe")
    with pytest.raises(SystemExit):
        parse_config(["--input", "a", "--output-prefix", "b"])  # --tokenizer-type is required here
    assert "--make-vocab-size-divisible-by" not in build_parser().format_help()  # the model's, not the data's


def test_tool_parsers_keep_their_flags_groups_and_defaults():
    from megatron_ixt.conversion.cli import build_parser as convert_parser
    from megatron_ixt.feedback.cli import AnnotateConfig, LLMCriticConfig, PythonCriticConfig
    from megatron_ixt.feedback.cli import build_parser as annotate_parser

    parsed = vars(annotate_parser().parse_args(["--input", "a", "b", "--output", "o"]))
    for cls in (AnnotateConfig, LLMCriticConfig, PythonCriticConfig):
        for field in dataclasses.fields(cls):
            if field.default is not dataclasses.MISSING:
                assert parsed[field.name] == field.default, field.name
    assert parsed["input"] == ["a", "b"] and parsed["critic"] == "auto"

    convert = convert_parser()
    args = convert.parse_args(["--from", "hf", "--input", "i", "--save", "s", "--tensor-model-parallel-size", "2"])
    assert (args.source, args.to, args.tensor_model_parallel_size, args.seq_length) == ("hf", None, 2, None)
    assert (args.make_vocab_size_divisible_by, args.bf16, args.tokenizer_type) == (128, False, None)
    for argv in ([], ["--to", "hf", "--from", "hf"]):  # exactly one direction
        with pytest.raises(SystemExit):
            convert.parse_args(argv)
