"""Preprocessing: JSONL documents -> megatron-core indexed datasets with feedback prefixes.

The pipeline, for `tools/preprocess_data.py`:

1. Expand the inputs (files, globs, `.gz`, `.zst`) and load the tokenizer and the prefix
   template; refuse early what cannot work (unreadable tokenizer, delimiters that are not
   single tokens, an output folder that cannot be written).
2. With `--quality-thresholds quantile`, a first pass collects the normalized scores and
   fixes the level cut points.
3. The main process reads raw lines in batches and hands them to the workers
   (`encode.py`), which parse, validate, tokenize and write one shard per batch and key.
4. The main process appends the shards in input order (`indexed_io.DatasetWriter`) as
   they arrive, with a bounded number of batches in flight, so memory stays flat.
5. Everything is written under a staging folder next to the output and renamed into
   place only when complete, the `.idx` last (`publish.py`, shared with the merge): a
   failed run leaves no `.bin`/`.idx`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import multiprocessing
import os
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from megatron_ixt.format.document import DocumentSpec
from megatron_ixt.preprocess.encode import BatchResult, DocumentCounts, EncodeSettings, KeyStats
from megatron_ixt.preprocess.workers import encode_in_worker, init_worker, scores_in_worker
from megatron_ixt.format.errors import DataError, InputError, TokenizerError
from megatron_ixt.format.indexed_io import META_FILE_SUFFIX, ROLES_FILE_SUFFIX, SIDE_FILE_SUFFIX, token_dtype
from megatron_ixt.format.levels import QualityThresholds
from megatron_ixt.format.prefixes import feedback_for_level, load_template, prefix_token_ids
from megatron_ixt.preprocess.config import PreprocessConfig, parse_config
from megatron_ixt.preprocess.publish import StagedDatasets, dataset_prefix, provenance
from megatron_ixt.runtime.progress import Progress, format_duration
from megatron_ixt.format.sources import LineBatchReader, expand_inputs
from megatron_ixt.tokenizers.build import tokenizer_from_config

logger = logging.getLogger("megatron_ixt.preprocess.pipeline")

META_FORMAT = "megatron_ixt.preprocess/1"


@dataclass
class PreprocessSummary(DocumentCounts):
    """What a run did (its batches' counts, added up); also the source of every `.meta.json`."""

    output_prefixes: dict[str, str] = field(default_factory=dict)
    """json key -> dataset prefix (pass it to IndexedDataset / --data-path)."""
    elapsed_s: float = 0.0
    processing_s: float = 0.0

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.stats.values())


def run_preprocess(config: PreprocessConfig) -> PreprocessSummary:
    """Run the whole pipeline (module docstring). Raises `DataError` on bad input."""
    started = time.perf_counter()
    paths = expand_inputs(config.input)
    try:
        template = load_template(config.prefix_template)
    except ValueError as error:
        raise DataError(f"--prefix-template: {error}") from None
    tokenizer = tokenizer_from_config(config.tokenizer, require_delimiters=template.kind != "none")
    _check_prefix_encodable(tokenizer, template)
    if config.append_eod:
        tokenizer.eod  # raises TokenizerError now rather than in every worker
    if config.prepend_bos and (getattr(tokenizer, "bos", None) is None or tokenizer.bos < 0):
        raise DataError(f"--prepend-bos: the {config.tokenizer.tokenizer_type} tokenizer has no beginning-of-sequence token")
    chat = _chat_template(tokenizer) if config.sft else None

    with StagedDatasets(config.output_prefix) as staged:
        settings = EncodeSettings(
            tokenizer=config.tokenizer,
            spec=DocumentSpec(tuple(config.json_keys), config.feedback_key, config.parsed_score_scale()),
            template=config.prefix_template,
            thresholds=QualityThresholds.fixed() if config.quality_thresholds == "quantile"
            else QualityThresholds.parse(config.quality_thresholds),
            append_eod=config.append_eod, skip_invalid=config.skip_invalid,
            shard_dir=staged.folder, dtype=np.dtype(dataset_dtype(tokenizer)).name,
            prepend_bos=config.prepend_bos, sft=config.sft, seq_length=config.seq_length,
            overlong=config.overlong,
        )
        if config.quality_thresholds == "quantile":
            settings = _with_quantile_thresholds(settings, paths, config)
        summary = _encode_all(settings, paths, config, staged)
        summary.elapsed_s = time.perf_counter() - started
        _write_metadata(summary, config, settings, tokenizer, template, paths, staged, chat)
        staged.publish(summary.output_prefixes.values())
    return summary


def _chat_template(tokenizer):
    """The chat template of ``--sft`` (the tokenizer's own, else the default), refused
    before any work if its assistant turns cannot be found."""
    from megatron_ixt.tokenizers.chat import chat_template_for, check_template

    template = chat_template_for(tokenizer)
    tokenizer.eod  # every conversation ends with it: TokenizerError now, not in every worker
    check_template(tokenizer, template)
    logger.info(f"SFT: the {template.origin} chat template (sha256 {template.sha256[:12]})")
    return template


def dataset_dtype(tokenizer) -> type:
    """Megatron-LM's token dtype for the tokenizer's own vocabulary, so that plain corpora
    stay byte-identical even when two delimiter ids were appended after it; a wider one
    only if the appended ids would not fit (a vocabulary just under 65,536)."""
    dtype = token_dtype(tokenizer.base_vocab_size)
    if np.iinfo(dtype).max < tokenizer.vocab_size - 1:
        dtype = token_dtype(tokenizer.vocab_size)
    return dtype


def _check_prefix_encodable(tokenizer, template) -> None:
    if template.kind == "none":
        return
    try:
        prefix_token_ids(tokenizer, template, feedback_for_level(5, critique="Clear and correct."))
    except (ValueError, TypeError) as error:
        raise TokenizerError(
            f"{tokenizer.tokenizer_type} cannot encode the '{template.name}' prefix text ({error}); "
            f"use --prefix-template none with it"
        ) from None


# -- running batches on workers ----------------------------------------------------------


def _ordered_results(
    settings: EncodeSettings,
    task: Callable[[object], BatchResult],
    batches: Iterable,
    workers: int,
) -> Iterator[BatchResult]:
    """Results of `task` over `batches`, in input order, with few batches in flight;
    `DataError` at the first batch that stopped on a bad line.

    With one worker everything runs in this process. With several, a process pool runs the
    tasks; at most `2 * workers + 1` batches are pending at any time, which bounds memory
    (Pool.imap would read the whole input ahead).

    ProcessPoolExecutor rather than multiprocessing.Pool, for two failure modes:
    Pool.terminate() kills workers that may hold a queue lock and can then hang forever,
    and a worker that dies (out of memory, say) leaves Pool waiting forever for its result,
    while the executor raises BrokenProcessPool. On an error we cancel what has not started
    and wait for the few running batches to finish: a bounded, clean shutdown.
    """
    if workers == 1:
        init_worker(settings)
        for batch in batches:
            yield _checked(task(batch))
        return
    # fork starts workers in milliseconds with megatron-core already imported; spawn would
    # re-import it (seconds per worker). Workers still build everything from `settings`.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    # Forked workers share the parent's memory copy-on-write, but the garbage collector
    # writes into every object it visits, so each worker would soon own a private copy of
    # all of megatron-core and torch (~250 MB). Frozen objects are never visited.
    gc.freeze()
    executor = ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker, initargs=(settings,))
    try:
        pending: deque = deque()
        for batch in batches:
            pending.append(executor.submit(task, batch))
            if len(pending) > 2 * workers:
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        gc.unfreeze()


def _result(future) -> BatchResult:
    try:
        return _checked(future.result())
    except BrokenProcessPool:
        raise DataError(
            "a preprocessing worker died unexpectedly (out of memory? killed?); no output was written"
        ) from None


def _checked(result: BatchResult) -> BatchResult:
    if result.error:
        raise DataError(result.error)
    return result


def _with_quantile_thresholds(settings: EncodeSettings, paths, config) -> EncodeSettings:
    """First pass: the quintiles of the normalized scores become the level cut points."""
    logger.info("First pass: computing quality quantiles")
    reader = LineBatchReader(paths, max_lines=config.batch_size)
    progress = Progress("Scored", total_disk_bytes=reader.total_disk_bytes, every_docs=config.log_interval,
                        show_bytes=True, emit=logger.info)
    scores = []
    results = _ordered_results(settings, scores_in_worker, reader, config.workers)
    with contextlib.closing(results):  # an error stops the workers at once
        for result in results:
            scores.append(result.normalized_scores)
            progress.update(result.documents, nbytes=result.nbytes, disk_bytes_done=reader.disk_bytes_done())
    progress.close()
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    thresholds = QualityThresholds.from_scores(all_scores)
    logger.info(
        f"Quality cut points (normalized scores, from {all_scores.size} annotated documents): "
        + ", ".join(f"{c:.4f}" for c in thresholds.cut_points)
    )
    return dataclasses.replace(settings, thresholds=thresholds)


def _encode_all(settings: EncodeSettings, paths, config: PreprocessConfig, staged: StagedDatasets) -> PreprocessSummary:
    keys = settings.spec.json_keys
    prefixes = {key: dataset_prefix(config.output_prefix, key) for key in keys}
    writers = {key: staged.writer(prefixes[key], np.dtype(settings.dtype), roles=settings.sft) for key in keys}
    summary = PreprocessSummary(output_prefixes=prefixes)
    reader = LineBatchReader(paths, max_lines=config.batch_size)
    progress = Progress("Processed", total_disk_bytes=reader.total_disk_bytes, every_docs=config.log_interval,
                        show_bytes=True, show_tokens=True, emit=logger.info)
    logger.info(f"Processing {len(paths)} input file(s), {reader.total_disk_bytes / 1e6:.1f} MB, "
                f"with {config.workers} worker(s)")
    results = _ordered_results(settings, encode_in_worker, reader, config.workers)
    try:
        with contextlib.closing(results):  # an error stops the workers at once
            for result in results:
                for key in keys:
                    shard = result.shards[key]
                    writers[key].append(shard)
                    if shard.bin_path:
                        os.remove(shard.bin_path)  # merged: free the disk space right away
                summary.add(result)
                progress.update(result.documents, nbytes=result.nbytes,
                                tokens=sum(s.tokens for s in result.stats.values()),
                                disk_bytes_done=reader.disk_bytes_done())
        summary.processing_s = progress.elapsed()
        if reader.lines_read == 0:
            raise InputError(f"{', '.join(paths)}: the input is empty (no lines)")
        if summary.documents == 0:
            raise InputError(f"no valid documents: all {summary.skipped} lines were skipped as invalid")
        for writer in writers.values():
            writer.finalize()
    finally:
        progress.close()
        for writer in writers.values():
            writer.close()
    logger.info(progress.line() + f" in {format_duration(progress.elapsed())}")
    return summary


# -- metadata ----------------------------------------------------------------------------


def _write_metadata(summary, config, settings, tokenizer, template, paths, staged: StagedDatasets,
                    chat=None) -> None:
    tokenizer_identity = tokenizer.identity()
    for key, prefix in summary.output_prefixes.items():
        stats = summary.stats.get(key, KeyStats())
        meta = {
            "format": META_FORMAT,
            **provenance(),
            "config": dataclasses.asdict(config),
            "json_key": key,
            "json_keys": list(settings.spec.json_keys),
            "inputs": [{"path": os.path.abspath(p), "bytes": os.path.getsize(p)} for p in paths],
            "tokenizer": {**tokenizer_identity, "dtype": settings.dtype},
            "template": template.identity(),
            "feedback_key": settings.spec.feedback_key,
            "score_scale": list(settings.spec.default_scale),
            "quality_thresholds": settings.thresholds.to_dict(),
            "append_eod": settings.append_eod,
            "prepend_bos": settings.prepend_bos,
            "side_file": {"suffix": SIDE_FILE_SUFFIX, "dtype": "int32",
                          "columns": ["prefix_length", "quality_level"]},
            **({"sft": {"chat_template": chat.identity(), "roles_file": ROLES_FILE_SUFFIX,
                        "seq_length": settings.seq_length, "overlong": settings.overlong}} if chat else {}),
            "counts": {
                "lines": summary.lines,
                "documents": summary.documents,
                "sequences": stats.sequences,
                "tokens": stats.tokens,
                "prefix_tokens": stats.prefix_tokens,
                "text_tokens": stats.tokens - stats.prefix_tokens,
                "prefixed_documents": stats.prefixed_documents,
                "empty_documents": stats.empty_documents,
                "annotated_documents": summary.annotated,
                "annotated_fraction": summary.annotated / summary.documents if summary.documents else 0.0,
                "documents_per_level": {str(level): n for level, n in enumerate(summary.level_counts)},
                "documents_with_delimiter_text": summary.documents_with_delimiter_text,
                "skipped_lines": summary.skipped,
                **({"loss_tokens": stats.loss_tokens, "truncated_conversations": stats.truncated,
                    "dropped_overlong_conversations": stats.dropped} if chat else {}),
                "input_bytes": summary.nbytes,
            },
            "skipped": summary.skipped_examples,
            "elapsed_s": round(summary.elapsed_s, 3),
        }
        staged.write_metadata(prefix, meta)


# -- command line -----------------------------------------------------------------------


def report(summary: PreprocessSummary) -> str:
    """The human summary printed at the end of a run."""
    lines = [
        f"Wrote {summary.documents} documents ({summary.annotated} annotated, "
        f"{summary.skipped} lines skipped) in {summary.elapsed_s:.1f} s:",
    ]
    for key, prefix in summary.output_prefixes.items():
        stats = summary.stats.get(key, KeyStats())
        lines.append(f"  {prefix}.{{bin,idx}} (+{SIDE_FILE_SUFFIX}, {META_FILE_SUFFIX}): "
                     f"{stats.sequences} sequences, {stats.tokens} tokens, {stats.prefix_tokens} prefix tokens")
        if stats.loss_tokens or stats.truncated or stats.dropped:
            lines.append(f"  SFT: {stats.loss_tokens} tokens in the loss ({ROLES_FILE_SUFFIX}), "
                         f"{stats.truncated} conversations truncated to their turns that fit in --seq-length + 1, "
                         f"{stats.dropped} left out (longer than that even without their later turns, or --overlong drop)")
    lines.append("  documents per quality level (0 = not annotated): "
                 + ", ".join(f"{level}: {n}" for level, n in enumerate(summary.level_counts)))
    if summary.documents_with_delimiter_text:
        lines.append(f"  note: {summary.documents_with_delimiter_text} documents contain a feedback delimiter string")
    for example in summary.skipped_examples:
        lines.append(f"  skipped {example['file']}:{example['line']}: {example['error']}")
    if summary.skipped > len(summary.skipped_examples):
        lines.append(f"  ... and {summary.skipped - len(summary.skipped_examples)} more skipped lines")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None, config: Optional[PreprocessConfig] = None) -> int:
    """Entry point of tools/preprocess_data.py; returns the exit status."""
    config = config or parse_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("megatron").setLevel(logging.WARNING)
    try:
        summary = run_preprocess(config)
    except (DataError, OSError) as error:  # OSError: e.g. the disk filled up while writing
        print(f"error: {error}", file=sys.stderr)
        print("No output was written.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; no output was written", file=sys.stderr)
        return 130
    print(report(summary), file=sys.stderr)
    return 0
