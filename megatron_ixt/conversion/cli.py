"""Command line of `tools/convert_checkpoint.py` (see the module docstrings of `export` and
`import_hf`)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Optional

from megatron_ixt.config.flags import add_dataclass_arguments, add_tokenizer_overrides
from megatron_ixt.config.schema import TOKENIZER_FILE_FIELDS, ModelConfig, ParallelConfig, TokenizerConfig, arg

USAGE = """\
  export:  tools/convert_checkpoint.py --to hf --load CKPT --output HF_DIR [--dtype bfloat16]
  import:  tools/convert_checkpoint.py --from hf --input HF_DIR --save CKPT \\
               [--tensor-model-parallel-size 2] [--pipeline-model-parallel-size 2] [--seq-length 2048]
"""


@dataclass
class DirectionConfig:
    """Which way to convert: exactly one of the two (a required, mutually exclusive pair)."""

    to: Optional[str] = arg(None, "export a checkpoint of this project", choices=("hf",))
    source: Optional[str] = arg(None, "import a Hugging Face model", choices=("hf",), flag="from")


@dataclass
class ExportConfig:
    """``--to hf``: the checkpoint to export and the folder to write."""

    load: Optional[str] = arg(None, "checkpoint folder (as given to --save when training)")
    output: Optional[str] = arg(None, "Hugging Face folder to write (replaced if it exists)")
    dtype: str = arg("float32", "dtype of the exported weights", choices=("float32", "bfloat16", "float16"))
    max_shard_size: str = arg("5GB", "largest safetensors file written (as transformers' save_pretrained: "
                                     "5GB, 500MB); more weights than that are sharded, with an index")


@dataclass
class ImportConfig:
    """``--from hf``: the folder to import and the checkpoint to create (its layout, sequence
    length, padding and precision come from the training config classes)."""

    input: Optional[str] = arg(None, "Hugging Face folder: config.json, *.safetensors, tokenizer.json")
    save: Optional[str] = arg(None, "checkpoint folder to create (must not exist or be empty)")


def parse_size(text: str) -> int:
    """``5GB``, ``500MB``, ``2GiB`` or a number of bytes."""
    units = {"gib": 1024 ** 3, "mib": 1024 ** 2, "kib": 1024, "gb": 10 ** 9, "mb": 10 ** 6, "kb": 10 ** 3, "b": 1}
    lowered = text.strip().lower()
    for unit, factor in units.items():
        if lowered.endswith(unit) and lowered[:-len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(lowered[:-len(unit)]) * factor)
    if lowered.isdigit():
        return int(lowered)
    raise argparse.ArgumentTypeError(f"--max-shard-size {text!r}: expected a size such as 5GB or 500MB")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/convert_checkpoint.py", usage=USAGE,
        description="Convert checkpoints between this project (megatron-core torch_dist, any TP/PP layout) "
                    "and Hugging Face folders of Llama, Mistral, Qwen2 and Qwen3 models (config.json + safetensors + tokenizer).")
    add_dataclass_arguments(parser.add_mutually_exclusive_group(required=True), DirectionConfig)
    export = parser.add_argument_group("export (--to hf)")
    add_dataclass_arguments(export, ExportConfig)
    add_tokenizer_overrides(export, "default: the one the checkpoint was trained with")
    imp = parser.add_argument_group("import (--from hf)")
    add_dataclass_arguments(imp, ImportConfig)
    add_dataclass_arguments(imp, ParallelConfig, fields=("tensor_model_parallel_size", "pipeline_model_parallel_size"))
    add_dataclass_arguments(imp, ModelConfig, fields=("seq_length",), defaults={"seq_length": None},
                            helps={"seq_length": "training sequence length (default: max positions, at most 4096)"})
    add_dataclass_arguments(imp, TokenizerConfig, fields=("make_vocab_size_divisible_by",))
    add_dataclass_arguments(imp, ModelConfig, fields=("bf16", "fp16", "apply_layernorm_1p"),
                            helps={"bf16": "store BF16 weights (for --bf16 training)",
                                   "fp16": "store FP16 weights (for --fp16 training)",
                                   "apply_layernorm_1p": "store norm weights as gamma - 1 (for --apply-layernorm-1p training)"})
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    need = ("load", "output") if args.to else ("input", "save")
    missing = [f"--{n}" for n in need if getattr(args, n) is None]
    if missing:
        parser.error(f"{'--to' if args.to else '--from'} hf needs {' and '.join(missing)}")
    from megatron_ixt.runtime.logs import setup_logging

    setup_logging()
    from megatron_ixt.config.cli import ConfigError
    from megatron_ixt.conversion import ConversionError
    from megatron_ixt.format.errors import DataError

    try:
        if args.to:
            from megatron_ixt.conversion.export import export_to_hf

            summary = export_to_hf(args.load, args.output, args.dtype,
                                   {name: getattr(args, name) for name in TOKENIZER_FILE_FIELDS},
                                   parse_size(args.max_shard_size))
        else:
            from megatron_ixt.conversion.import_hf import import_from_hf

            summary = import_from_hf(args.input, args.save, args.tensor_model_parallel_size,
                                     args.pipeline_model_parallel_size, args.seq_length,
                                     args.make_vocab_size_divisible_by, args.bf16, args.fp16,
                                     args.apply_layernorm_1p)
    except ConfigError as error:  # a layout the model cannot take: one line, exit 2, as every entry point
        print(f"convert_checkpoint.py: error: {error}", file=sys.stderr)
        return ConfigError.exit_code
    except (ConversionError, DataError, OSError) as error:
        print(f"convert_checkpoint.py: error: {error}", file=sys.stderr)
        return 1
    finally:
        from megatron_ixt.runtime.distributed import destroy_distributed

        destroy_distributed()
    print(json.dumps(summary, indent=2))
    return 0
