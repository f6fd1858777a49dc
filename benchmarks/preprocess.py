#!/usr/bin/env python
"""Benchmark tools/preprocess_data.py end to end, optionally against Megatron-LM's own tool.

    python benchmarks/preprocess.py                                   # ours: 50,000 docs, 1 and 2 workers
    python benchmarks/preprocess.py --workers 2 --repeats 5 \
        --reference-tree /work/megatron-lm-ref \
        --reference-python /work/megatron-lm-ref-venv/bin/python       # ours vs Megatron-LM, interleaved
    python benchmarks/preprocess.py --workers 2 --documents 2700000 --repeats 1   # ~2 GB of input

The input is real text: the CPython standard library sources (tests included), cut into
documents of ~740 characters and cycled up to `--documents` (50,000 documents: 38 MB). A
4k-piece SentencePiece model (lossless settings of tools/train_tokenizer.py) is trained
on it once and cached in `--work-dir`. Each run is a fresh process, as a user (or a SLURM
array task) runs it, so start-up is included:

* wall s: the whole run, start-up to exit; the headline figure ("end to end");
* docs/s, MB/s, tokens/s: "processing" rates from the end of start-up, as both tools
  report them; "end to end" docs/s divides by the wall time;
* CPU s: user + system time of the tool and its workers (less sensitive than rates to
  other load on a shared machine);
* peak memory: the largest sum over the process tree (main + workers) of the proportional
  set size (shared pages split between processes), sampled every 100 ms.

Plain documents (no feedback) are what Megatron-LM's tool can process; the `+prefix` row
runs the same corpus with `--annotated-fraction` of the documents carrying critique
feedback.

The reference: `--reference-tree` is a Megatron-LM source tree (its
`tools/preprocess_data.py` and `megatron.training` run from it) and `--reference-python`
the interpreter of a separate environment with the matching megatron-core and torch
(e.g. `torch==2.13.0 megatron-core==0.16.1 sentencepiece six regex pyyaml pydantic` for
tag core_v0.16.1). The figures name it "Megatron-LM's tools/preprocess_data.py at" the
tree's `git describe`; a tree without git metadata names itself in full by the first line
of a `REFERENCE` file (e.g. how it was obtained, or that it is not Megatron-LM at all). The configurations run
interleaved (ours, reference, ours, ...) `--repeats` times, so that other load on the
machine hits both alike; medians are reported, with the median of the per-pair ratios.
Outputs are compared byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_ixt.tokenizers.training import train_sentencepiece  # noqa: E402

RATE_LINE = re.compile(r"Processed (\d+) documents \(([\d.]+) docs/s, ([\d.]+) MB/s")


def make_corpus(path: Path, documents: int, doc_chars: int, annotated_fraction: float, seed: int = 0) -> None:
    """JSONL of stdlib source chunks; a share of them with random critique feedback."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < documents:
            for file in files:
                text = file.read_text(encoding="utf-8", errors="replace")
                for start in range(0, len(text), doc_chars):
                    doc = {"id": written, "text": text[start:start + doc_chars]}
                    if rng.random() < annotated_fraction:
                        score = round(rng.uniform(0, 10), 1)
                        doc["feedback"] = {
                            "score": score, "scale": [0, 10],
                            "axes": {a: round(rng.uniform(0, 10)) for a in
                                     ("writing_style", "expertise", "educational_value", "factual_accuracy", "efficiency")},
                            "critique": "Readable, idiomatic code; a few functions lack docstrings.",
                        }
                    out.write(json.dumps(doc) + "\n")
                    written += 1
                    if written == documents:
                        return


def _pss_bytes(pid: int) -> int:
    """Proportional set size from /proc (cheap: the kernel sums it); RSS elsewhere."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def measure(cmd: list[str], env: dict) -> dict:
    """Run `cmd`; return wall time, peak memory of its process tree and its output."""
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Output to a file, not a pipe: nothing reads a pipe while the tool runs, and a long run's
    # progress lines would fill it and block the tool.
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            pids = [root.pid] + [c.pid for c in root.children(recursive=True)]
        except psutil.Error:
            pids = []
        peak = max(peak, sum(_pss_bytes(pid) for pid in pids))
        time.sleep(0.1)
    proc.wait()
    log.seek(0)
    output = log.read()
    log.close()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the tool and its (joined) workers
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    return {"wall_s": wall, "cpu_s": cpu, "peak_bytes": peak, "log": output}


def summarize(name: str, workers: int, run: dict, out_prefix: str, input_bytes: int, documents: int) -> dict:
    matches = RATE_LINE.findall(run["log"])
    if not matches:
        raise SystemExit(f"{name}: no progress line in its output:\n{run['log'][-2000:]}")
    reported_docs, docs_per_s, _ = matches[-1]
    processing_s = int(reported_docs) / float(docs_per_s)
    tokens = os.path.getsize(out_prefix + "_text_document.bin") // 2  # uint16 with a 4k vocabulary
    return {
        "tool": name, "workers": workers,
        "docs_per_s": documents / processing_s,
        "mb_per_s": input_bytes / 1e6 / processing_s,
        "tokens_per_s": tokens / processing_s,
        "end_to_end_docs_per_s": documents / run["wall_s"],
        "wall_s": run["wall_s"],
        "cpu_s": run["cpu_s"],
        "peak_mib": run["peak_bytes"] / 2**20,
        "log": run["log"][-4000:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default=str(REPO / ".cache" / "bench_preprocess"))
    parser.add_argument("--documents", type=int, default=50_000)
    parser.add_argument("--doc-chars", type=int, default=740)
    parser.add_argument("--vocab-size", type=int, default=4000)
    parser.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--annotated-fraction", type=float, default=0.3)
    parser.add_argument("--reference-tree", "--megatron-lm", dest="reference_tree",
                        help="Megatron-LM source tree: also run its tools/preprocess_data.py")
    parser.add_argument("--reference-python", default=sys.executable,
                        help="interpreter of the reference's environment (default: this one)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs per configuration (medians)")
    parser.add_argument("--no-prefix-row", action="store_true", help="skip the +prefix configuration")
    args = parser.parse_args()

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    plain = work / f"plain_{args.documents}.jsonl"
    annotated = work / f"ixt_{args.documents}.jsonl"
    if not plain.exists():
        make_corpus(plain, args.documents, args.doc_chars, 0.0)
    if not annotated.exists() and not args.no_prefix_row:
        make_corpus(annotated, args.documents, args.doc_chars, args.annotated_fraction)
    model = work / f"sp_{args.model_type}_{args.vocab_size}.model"
    if not model.exists():
        t0 = time.perf_counter()
        train_sentencepiece(str(plain), str(model.with_suffix("")), args.vocab_size, args.model_type,
                            max_documents=10_000)
        print(f"trained {model.name} in {time.perf_counter() - t0:.1f} s")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    common = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", str(model),
              "--append-eod", "--log-interval", "1000"]

    # Every configuration: (label, workers, command, env, output prefix, input).
    configs = []
    for workers in args.workers:
        for label, corpus, extra in (("megatron_ixt", plain, []),
                                     ("megatron_ixt+prefix", annotated, ["--prefix-template", "critique"])):
            if corpus is annotated and (workers != max(args.workers) or args.no_prefix_row):
                continue
            out = str(work / f"out_{label.replace('+', '_')}_{workers}")
            cmd = [sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(corpus),
                   "--output-prefix", out, "--workers", str(workers), *common, *extra]
            configs.append((label, workers, cmd, env, out, corpus))
    reference = None
    if args.reference_tree:
        tree = Path(args.reference_tree).resolve()
        reference = reference_name(tree)
        ref_env = {**env, "PYTHONPATH": os.pathsep.join([str(tree), env.get("PYTHONPATH", "")])}
        for workers in args.workers:
            out = str(work / f"out_reference_{workers}")
            cmd = [args.reference_python, str(tree / "tools" / "preprocess_data.py"), "--input", str(plain),
                   "--output-prefix", out, "--workers", str(workers), *common]
            configs.append(("reference", workers, cmd, ref_env, out, plain))
        print(f"reference: {reference}")
    print(f"input: {plain.name}, {plain.stat().st_size / 1e6:.1f} MB, {args.documents} documents; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    # Round robin over the configurations: on a shared machine other load comes and goes,
    # and interleaving makes it hit every configuration alike.
    runs: dict = {}
    for repeat in range(args.repeats):
        for label, workers, cmd, run_env, out, corpus in configs:
            result = summarize(label, workers, measure(cmd, run_env), out, corpus.stat().st_size, args.documents)
            result["load"] = os.getloadavg()[0]
            print(f"[{repeat + 1}/{args.repeats}] " + _row(result), flush=True)
            runs.setdefault((label, workers), []).append(result)
    medians = {key: {k: (statistics.median(r[k] for r in rs) if isinstance(rs[0][k], float) else rs[0][k])
                     for k in rs[0]} for key, rs in runs.items()}
    print(f"\nMedians of {args.repeats} interleaved runs:")
    for result in medians.values():
        print(_row(result))
    if reference:
        for workers in args.workers:
            ours, theirs = runs[("megatron_ixt", workers)], runs[("reference", workers)]
            same = all(Path(str(work / f"out_megatron_ixt_{workers}") + s).read_bytes()
                       == Path(str(work / f"out_reference_{workers}") + s).read_bytes()
                       for s in ("_text_document.bin", "_text_document.idx"))
            wall = medians[("reference", workers)]["wall_s"] / medians[("megatron_ixt", workers)]["wall_s"]
            paired = statistics.median(t["wall_s"] / o["wall_s"] for o, t in zip(ours, theirs))
            print(f"{workers} worker(s), end to end: megatron_ixt {medians[('megatron_ixt', workers)]['wall_s']:.2f} s, "
                  f"{reference} {medians[('reference', workers)]['wall_s']:.2f} s (medians): {wall:.2f}x faster "
                  f"(median of paired ratios {paired:.2f}x); outputs byte-identical: {same}")
    (work / "results.json").write_text(json.dumps({"reference": reference, "runs": {
        f"{label} workers={workers}": rs for (label, workers), rs in runs.items()}}, indent=2, default=str))


def reference_name(tree: Path) -> str:
    """How the figures name the reference: the tree's git description, else its REFERENCE file."""
    described = subprocess.run(["git", "-C", str(tree), "describe", "--tags", "--always", "--dirty"],
                               capture_output=True, text=True)
    if described.returncode == 0 and described.stdout.strip():
        commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
        version = f"{described.stdout.strip()} ({commit.stdout.strip()[:12]})"
    elif (tree / "REFERENCE").is_file():  # a tree without git metadata names itself, in full
        return f"{(tree / 'REFERENCE').read_text().splitlines()[0].strip()}, from {tree}"
    else:
        version = "unknown version (no git metadata, no REFERENCE file)"
    return f"Megatron-LM's tools/preprocess_data.py at {version}, from {tree}"


def _row(r: dict) -> str:
    return (f"{r['tool']:<18} workers={r['workers']}: {r['docs_per_s']:>8.0f} docs/s  "
            f"{r['mb_per_s']:6.2f} MB/s  {r['tokens_per_s'] / 1e6:5.2f} M tokens/s  "
            f"(end to end {r['end_to_end_docs_per_s']:6.0f} docs/s, {r['wall_s']:.2f} s, {r['cpu_s']:.1f} CPU s)  "
            f"peak {r['peak_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
