#!/usr/bin/env python
"""tools/preprocess_data.py --sft against plain preprocessing of the same text.

    python benchmarks/preprocess_sft.py [--conversations 20000] [--workers 2] [--repeats 3]

The input is real text: CPython standard-library source chunks (~740 characters) as the
assistant's answers, each after a user question naming its file, 70% of the lines annotated
with critique feedback, some with a system message and a second turn. The same texts run
through plain preprocessing as documents (``text`` = question + answer, the same feedback),
so both tokenize about the same characters; SFT does more per line (Jinja rendering of the
chat template per turn, two variants when annotated, the roles). A 4k-piece SentencePiece
model is trained once in --work-dir. Each run is a fresh process, start-up included; the
runs alternate (SFT, plain, SFT, ...) and medians are printed: wall s, conversations (or
documents) per s, tokens per s, CPU s, peak memory of the process tree.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from preprocess import measure  # noqa: E402

from megatron_ixt.tokenizers.training import train_sentencepiece  # noqa: E402


def make_inputs(folder: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    rng = random.Random(seed)
    sft, plain = folder / "conversations.jsonl", folder / "documents.jsonl"
    written = 0
    with open(sft, "w") as a, open(plain, "w") as b:
        while written < n:
            for file in files:
                text = file.read_text(encoding="utf-8", errors="replace")
                for start in range(0, len(text), 740):
                    question = f"Show me part {start // 740} of {file.name}."
                    answer = text[start:start + 740].strip() or "pass"
                    messages = ([{"role": "system", "content": "You are a Python expert."}] if written % 2 else [])
                    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
                    if written % 5 == 0:
                        messages += [{"role": "user", "content": "Thanks. Which file?"},
                                     {"role": "assistant", "content": file.name}]
                    line = {"id": written, "messages": messages}
                    doc = {"id": written, "text": "\n".join(m["content"] for m in messages)}
                    if rng.random() < 0.7:
                        line["feedback"] = doc["feedback"] = {"score": round(rng.uniform(0, 10), 1),
                                                              "critique": "Readable, idiomatic code."}
                    a.write(json.dumps(line) + "\n")
                    b.write(json.dumps(doc) + "\n")
                    written += 1
                    if written == n:
                        return sft, plain
    return sft, plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=REPO / ".cache" / "bench_preprocess_sft")
    args = parser.parse_args()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    sft, plain = make_inputs(work, args.conversations)
    model = work / "sp4k.model"
    if not model.exists():
        train_sentencepiece(str(plain), str(work / "sp4k"), 4000, "bpe", num_threads=2)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    common = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", str(model),
              "--workers", str(args.workers), "--prefix-template", "critique"]
    runs = {"sft": [], "plain": []}
    for _ in range(args.repeats):
        for name, extra in (("sft", ["--sft", "--input", str(sft), "--output-prefix", str(work / "out_sft")]),
                            ("plain", ["--input", str(plain), "--output-prefix", str(work / "out_plain"),
                                       "--append-eod"])):
            runs[name].append(measure([sys.executable, str(REPO / "tools" / "preprocess_data.py"), *common, *extra],
                                      env))
    tokens = {"sft": os.path.getsize(work / "out_sft_messages_document.bin") // 2,
              "plain": os.path.getsize(work / "out_plain_text_document.bin") // 2}
    print(f"{args.conversations} lines, {args.workers} workers, medians of {args.repeats} interleaved runs:")
    print("| input | wall s | lines/s | tokens/s | CPU s | peak MiB |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for name, rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        cpu = statistics.median(r["cpu_s"] for r in rs)
        peak = statistics.median(r["peak_bytes"] for r in rs) / 2**20
        medians[name] = wall
        print(f"| {name} | {wall:.2f} | {args.conversations / wall:,.0f} | {tokens[name] / wall:,.0f} | {cpu:.2f} "
              f"| {peak:.0f} |")
    print(f"SFT / plain wall time: {medians['sft'] / medians['plain']:.2f}x "
          f"(SFT tokens {tokens['sft']:,}, plain {tokens['plain']:,})")


if __name__ == "__main__":
    main()
