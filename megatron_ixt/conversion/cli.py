"""Command line of `tools/convert_checkpoint.py` (see the module docstrings of `export` and
`import_hf`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

USAGE = """\
  export:  tools/convert_checkpoint.py --to hf --load CKPT --output HF_DIR [--dtype bfloat16]
  import:  tools/convert_checkpoint.py --from hf --input HF_DIR --save CKPT \\
               [--tensor-model-parallel-size 2] [--pipeline-model-parallel-size 2] [--seq-length 2048]
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/convert_checkpoint.py", usage=USAGE,
        description="Convert checkpoints between this project (megatron-core torch_dist, any TP/PP layout) "
                    "and Hugging Face Llama folders (config.json + safetensors + tokenizer).")
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--to", choices=["hf"], help="export a checkpoint of this project")
    direction.add_argument("--from", dest="source", choices=["hf"], help="import a Hugging Face model")
    export = parser.add_argument_group("export (--to hf)")
    export.add_argument("--load", help="checkpoint folder (as given to --save when training)")
    export.add_argument("--output", help="Hugging Face folder to write (replaced if it exists)")
    export.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the exported weights (default: float32)")
    for flag in ("--tokenizer-type", "--tokenizer-model", "--vocab-file", "--merge-file"):
        export.add_argument(flag, help="default: the one the checkpoint was trained with")
    imp = parser.add_argument_group("import (--from hf)")
    imp.add_argument("--input", help="Hugging Face folder: config.json, *.safetensors, tokenizer.json")
    imp.add_argument("--save", help="checkpoint folder to create (must not exist or be empty)")
    imp.add_argument("--tensor-model-parallel-size", type=int, default=1)
    imp.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    imp.add_argument("--seq-length", type=int, help="training sequence length (default: max positions, at most 4096)")
    imp.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    imp.add_argument("--bf16", action="store_true", help="store BF16 weights (for --bf16 training)")
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

            summary = export_to_hf(args.load, args.output, args.dtype, {
                "tokenizer_type": args.tokenizer_type, "tokenizer_model": args.tokenizer_model,
                "vocab_file": args.vocab_file, "merge_file": args.merge_file})
        else:
            from megatron_ixt.conversion.import_hf import import_from_hf

            summary = import_from_hf(args.input, args.save, args.tensor_model_parallel_size,
                                     args.pipeline_model_parallel_size, args.seq_length,
                                     args.make_vocab_size_divisible_by, args.bf16)
    except (ConversionError, ConfigError, DataError, OSError) as error:
        print(f"convert_checkpoint.py: error: {error}", file=sys.stderr)
        return 1
    finally:
        from megatron_ixt.runtime.distributed import destroy_distributed

        destroy_distributed()
    print(json.dumps(summary, indent=2))
    return 0
