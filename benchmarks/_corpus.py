"""A preprocessed benchmark corpus from real text (Python standard library), built once
into a cache folder: SentencePiece tokenizer + IXT dataset (critique prefixes, with axis
scores and a critique line, on 70% of the documents, as IXT trains) + a plain view of the
same .bin/.idx without the side file (a GPT dataset)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_corpus(cache: Path, num_docs: int = 4000) -> dict:
    cache = cache / "critique-v2"  # the layout of the corpus: a new one does not reuse an old cache
    cache.mkdir(parents=True, exist_ok=True)
    ixt, plain = cache / "ds_text_document", cache / "plain_text_document"
    if not (Path(f"{ixt}.bin").exists() and Path(f"{plain}.idx").exists()):
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
                    break
            if len(docs) == num_docs:
                break
        jsonl = cache / "docs.jsonl"
        jsonl.write_text("".join(json.dumps(d) + "\n" for d in docs))
        run = lambda *args: subprocess.run([sys.executable, *map(str, args)], check=True, cwd=REPO,  # noqa: E731
                                           capture_output=True)
        run("tools/train_tokenizer.py", "--input", jsonl, "--model-prefix", cache / "sp", "--vocab-size", 4000,
            "--model-type", "bpe")
        run("tools/preprocess_data.py", "--input", jsonl, "--output-prefix", cache / "ds", "--tokenizer-type",
            "SentencePieceTokenizer", "--tokenizer-model", cache / "sp.model", "--append-eod", "--workers", 2,
            "--prefix-template", "critique")
        for ext in (".bin", ".idx"):
            if not os.path.lexists(f"{plain}{ext}"):
                os.symlink(f"{ixt}{ext}", f"{plain}{ext}")
    return {"ixt": str(ixt), "plain": str(plain), "tokenizer": str(cache / "sp.model")}
