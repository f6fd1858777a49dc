"""Hugging Face conversion in bounded memory: peak RSS and wall time of
``tools/convert_checkpoint.py`` import and export, against the size of the weights.

    python benchmarks/convert.py                      # Llama-3.2-1B-shaped, untied: 1.56B parameters
    python benchmarks/convert.py --layers 4           # 0.77B: what the code before streaming could fit
    python benchmarks/convert.py --checkout /tmp/old  # the tool of another checkout, same model

The model: a random Llama-3-shaped model (hidden 2048, MLP 8192, 32 heads, 8 KV heads, a
128,256-token vocabulary, untied embeddings, Llama 3.2's llama3 RoPE scaling), ``--layers``
deep, built and saved sharded by transformers (``save_pretrained``, 2 GB shards) in
``--dtype``, with a word-level tokenizer of the full vocabulary. It is built once and cached
under ``--work``.

Each conversion runs in a fresh process under a wrapper that reports its peak resident set
size (``ru_maxrss`` of its one child). ``baseline`` is the peak of a process that only imports
what the converter imports (torch, megatron-core, transformers' tokenizers): the part of the
peak that does not depend on the model. The ratio is ``(peak - baseline) / weights``, where
``weights`` is the size of the safetensors files read. The round trip is checked last:
transformers' logits on a few tokens of the source folder and of the exported one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VOCAB = 128256
GIB = 1024 ** 3

# Run by the wrapper process: the child's peak RSS (KiB on Linux) and its wall time.
MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"rc": proc.returncode, "wall_s": wall, "peak_bytes": peak, "stderr": proc.stderr[-3000:]}))
"""

BASELINE = ("import torch, megatron.core, safetensors, tokenizers, yaml; "
            "from megatron.core import dist_checkpointing; from megatron.core.models.gpt import GPTModel")


def measure(command: list, cwd: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, *map(str, command)], cwd=cwd, capture_output=True,
                         text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{result['stderr']}")
    return result


def build_model(folder: Path, layers: int, dtype: str, rope_type: str) -> None:
    """The random model and its tokenizer (see the module docstring), saved by transformers."""
    if (folder / "config.json").is_file():
        return
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(VOCAB - len(specials))])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(specials)
    tokenizer.save(str(partial / "tokenizer.json"))
    (partial / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|eot_id|>", "bos_token": "<|begin_of_text|>"}))
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=2048, intermediate_size=8192, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=0, eos_token_id=2,
                         rope_parameters={"rope_type": "default", "rope_theta": 500000.0} if rope_type == "default" else
                         {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(getattr(torch, dtype))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.ones_like(p) if "norm" in name else torch.randn_like(p) * 0.02)
    model.save_pretrained(partial, max_shard_size="2GB")
    os.replace(partial, folder)


def logits(folder: Path, tokens: list) -> "torch.Tensor":  # noqa: F821
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0, :, :VOCAB]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=17, help="decoder layers (17: 1.56B parameters)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--rope-type", default="llama3", choices=("llama3", "default"),
                        help="default: plain RoPE (what the converter before streaming accepted)")
    parser.add_argument("--checkout", type=Path, default=REPO, help="the repository whose converter is measured")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench-convert")
    parser.add_argument("--no-check", action="store_true", help="skip the round-trip logits check")
    args = parser.parse_args()

    source = args.work / f"llama3-{args.layers}l-{args.dtype}-{args.rope_type}"
    print(f"building {source} ...", flush=True)
    build_model(source, args.layers, args.dtype, args.rope_type)
    weights = sum(f.stat().st_size for f in source.glob("*.safetensors"))
    params = weights // (4 if args.dtype == "float32" else 2)
    ckpt, exported = args.work / "ckpt", args.work / "exported"
    for path in (ckpt, exported):
        shutil.rmtree(path, ignore_errors=True)
    tool = args.checkout / "tools" / "convert_checkpoint.py"
    bf16 = ["--bf16"] if args.dtype == "bfloat16" else []
    baseline = measure([sys.executable, "-c", BASELINE], args.checkout)
    runs = {
        "import": measure([sys.executable, tool, "--from", "hf", "--input", source, "--save", ckpt, *bf16], args.checkout),
        "export": measure([sys.executable, tool, "--to", "hf", "--load", ckpt, "--output", exported,
                           "--dtype", args.dtype], args.checkout),
    }
    print(f"\ncheckout {args.checkout} ({subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=args.checkout, capture_output=True, text=True).stdout.strip()})")
    print(f"model: {params / 1e9:.2f}B parameters, {args.layers} layers, weights {weights / GIB:.2f} GiB "
          f"({args.dtype}, {len(list(source.glob('*.safetensors')))} files); baseline (imports only) "
          f"{baseline['peak_bytes'] / GIB:.2f} GiB")
    print("| direction | peak RSS (GiB) | peak / weights | (peak - baseline) / weights | wall (s) |")
    print("|---|---|---|---|---|")
    for name, run in runs.items():
        peak = run["peak_bytes"]
        print(f"| {name} | {peak / GIB:.2f} | {peak / weights:.2f}x | {(peak - baseline['peak_bytes']) / weights:.2f}x "
              f"| {run['wall_s']:.1f} |")
    if not args.no_check:
        tokens = list(range(3, 3 + 24)) + [VOCAB - 1, 1000, 77777]
        diff = (logits(source, tokens) - logits(exported, tokens)).abs().max().item()
        print(f"round trip: max |logit difference| source vs exported, {len(tokens)} tokens: {diff:.3g}")


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    start = time.perf_counter()
    main()
    print(f"({time.perf_counter() - start:.0f} s in all)")
