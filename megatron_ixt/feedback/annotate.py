"""The annotation pipeline: JSONL documents in, the same documents with ``feedback`` out.

:func:`annotate_file` in five steps:

1. **Validate** every input line (JSON, ``text``, key types, unique ids) before writing
   anything, so a bad line far down does not leave a half-done output. Documents without
   an ``id`` get ``<file name>:<line>``, written into the output.
2. **Resume**: if the output exists, read it, drop a torn last line (a crash mid-write),
   and collect the ids already written. The settings of the run that wrote it (critic,
   fraction, seed) are kept beside it in ``<output>.settings.json`` and must match.
3. **Select**: with ``fraction < 1`` a document is annotated when a hash of (seed, id) falls
   under the fraction -- the same documents whatever the order, the run or the resume.
   Unselected documents, and documents that already carry feedback (unless
   ``overwrite``), are written through unchanged.
4. **Judge** with the critic in a pool of worker threads (``workers``, default the
   critic's ``default_workers``); at most ``4 * workers`` documents are in flight.
5. **Write** in input order (so the output is always a prefix of the input, and a resumed
   run continues it): each line is flushed as it is written and fsynced at least every
   ``fsync_interval_s`` and at the end. A crash loses at most the documents in flight;
   a rerun redoes exactly those.

Per-document outcomes: ``annotated``; ``error`` (the judge answered unusably: written
without feedback, reason under ``feedback_error``); ``not_applicable`` (e.g. the math
critic on prose: written unchanged). A judge that cannot be reached stops the run with
:class:`JudgeUnavailable`; Ctrl-C stops it with KeyboardInterrupt; both after writing
every finished document that is next in order.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from megatron_ixt.feedback.base import Critic, NotApplicable, VerdictError
from megatron_ixt.feedback.documents import check_inputs, id_key, iter_documents, judged_text
from megatron_ixt.runtime.progress import Progress
from megatron_ixt.feedback.summary import Summary
from megatron_ixt.feedback.record import Feedback

logger = logging.getLogger(__name__)


class ResumeError(Exception):
    """The existing output cannot be resumed (corrupt, or written with other settings)."""


def is_selected(doc_id: Any, fraction: float, seed: int) -> bool:
    """Whether a document is in the annotated share: a hash of (seed, id) below ``fraction``."""
    if fraction >= 1.0:
        return True
    digest = hashlib.sha256(f"{seed}\0{id_key(doc_id)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction


def settings_path(output: Path) -> Path:
    return output.with_name(output.name + ".settings.json")


def read_existing_output(output: Path, summary: Summary) -> set[str]:
    """Ids (as id_key) already in ``output``; truncates a torn last line; counts them."""
    done: set[str] = set()
    if not output.exists():
        return done
    with open(output, "r+b") as handle:
        data = handle.read()
        end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
        if end < len(data):
            logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run",
                           output, len(data) - end)
            handle.truncate(end)
    for number, raw in enumerate(data[:end].splitlines(), start=1):
        try:
            doc = json.loads(raw)
            key = id_key(doc["id"])
        except (ValueError, KeyError, TypeError):
            raise ResumeError(f"{output}:{number}: not a document written by this tool; "
                              "remove the file or choose another --output") from None
        if key in done:
            raise ResumeError(f"{output}:{number}: id {doc['id']!r} is written twice")
        done.add(key)
        summary.add(doc, "resumed")
    return done


def check_settings(output: Path, settings: dict[str, Any], resuming: bool) -> None:
    """Refuse to resume an output written with other settings; record them otherwise."""
    path = settings_path(output)
    if resuming and path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        if changed:
            raise ResumeError(
                f"{output} was written with other settings ({', '.join(changed)}: "
                f"{ {k: previous.get(k) for k in changed} } now { {k: settings.get(k) for k in changed} }); "
                "rerun with the same settings, or remove the output to start over")
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class _DaemonPool:
    """A minimal thread pool of daemon threads.

    concurrent.futures.ThreadPoolExecutor joins its threads at interpreter exit, so after
    Ctrl-C the process would wait for every in-flight judge request to time out. Daemon
    threads let it exit at once; their unfinished work is redone on resume.
    """

    def __init__(self, workers: int):
        self._tasks: queue.Queue = queue.Queue()
        for index in range(workers):
            threading.Thread(target=self._work, name=f"annotate-{index}", daemon=True).start()

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._tasks.put((future, function, args))
        return future

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            future, function, args = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args))
            except BaseException as error:  # handed to the main thread with the result
                future.set_exception(error)

    def shutdown(self, workers: int) -> None:
        """Let idle threads exit; pending tasks are dropped."""
        try:
            while True:
                future, _, _ = self._tasks.get_nowait()
                future.cancel()
        except queue.Empty:
            pass
        for _ in range(workers):
            self._tasks.put(None)


def _judge(critic: Critic, doc: dict[str, Any]) -> tuple[str, Feedback | str | None]:
    """Run the critic on one document: (outcome, feedback or error message)."""
    try:
        return "annotated", critic.critique(judged_text(doc))
    except NotApplicable:
        return "not_applicable", None
    except VerdictError as error:
        return "error", str(error)


class _Writer:
    """Appends JSON lines to the output (and reasoning to the audit file) durably enough."""

    def __init__(self, output: Path, audit: Path | None, fsync_interval_s: float):
        self.handle = open(output, "ab")
        self.audit = open(audit, "ab") if audit else None
        self.fsync_interval_s = fsync_interval_s
        self.last_sync = time.monotonic()

    def write(self, doc: dict[str, Any], reasoning: str | None = None, judge: str | None = None) -> None:
        if self.audit is not None and reasoning:
            # The audit line goes first: after a crash between the two writes the document
            # is redone and the audit file holds it twice (the last entry wins).
            record = {"id": doc["id"], "judge": judge, "reasoning": reasoning}
            self.audit.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
            self.audit.flush()
        # One write call per line; flushed at once so that a killed process loses nothing
        # already handed over. fsync (which protects against a machine crash) costs
        # milliseconds, so it runs at most every fsync_interval_s, not per line.
        self.handle.write((json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))
        self.handle.flush()
        if time.monotonic() - self.last_sync >= self.fsync_interval_s:
            self.sync()

    def sync(self) -> None:
        for handle in (self.handle, self.audit):
            if handle is not None:
                handle.flush()
                os.fsync(handle.fileno())
        self.last_sync = time.monotonic()

    def close(self) -> None:
        self.sync()
        self.handle.close()
        if self.audit is not None:
            self.audit.close()


def annotate_file(inputs: Sequence[str | os.PathLike] | str | os.PathLike, output: str | os.PathLike,
                  critic: Critic, *, fraction: float = 1.0, seed: int = 0, workers: int | None = None,
                  overwrite: bool = False, audit_path: str | os.PathLike | None = None,
                  progress: bool = True, fsync_interval_s: float = 1.0) -> Summary:
    """Annotate the documents of ``inputs`` into ``output``; resumable. See the module doc.

    Raises DocumentError (bad input line), InputError (unreadable input file), ResumeError (output not resumable), JudgeUnavailable
    (judge unreachable: rerun to resume) and KeyboardInterrupt; in every case the output
    holds only complete lines of finished documents.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"--fraction must be within [0, 1], got {fraction}")
    output = Path(output)
    if any(Path(path).resolve() == output.resolve() for path in inputs):
        raise ValueError(f"the output {output} is also an input")
    total = check_inputs(inputs)
    summary = Summary()
    check_settings(output, {"critic": critic.describe(), "fraction": fraction, "seed": seed,
                            "overwrite": overwrite}, resuming=output.exists())
    done = read_existing_output(output, summary)
    if done:
        logger.info("%s: resuming, %d of %d documents already written", output, len(done), total)

    workers = workers or critic.default_workers
    window = 4 * workers  # documents in flight: enough to keep every worker busy
    pool = _DaemonPool(workers)
    writer = _Writer(output, Path(audit_path) if audit_path else None, fsync_interval_s)
    # A bar on a terminal; in a log file a plain line every 10 s, so that logs stay short.
    bar = Progress("Annotated", total=total, already_done=len(done), every_s=10.0, enabled=progress)
    pending: collections.deque = collections.deque()  # (doc, future or None, outcome if no future)
    started = time.monotonic()

    def write_head(keep_at_most: int | None) -> None:
        """Write the finished documents at the head of the queue, in order.

        With ``keep_at_most``, first wait until no more than that many are pending.
        """
        while pending:
            doc, future, outcome = pending[0]
            must_wait = keep_at_most is not None and len(pending) > keep_at_most
            if future is not None and not future.done() and not must_wait:
                break
            reasoning = judge = None
            if future is not None:
                # Re-raises JudgeUnavailable and critic bugs *before* the document leaves the
                # queue, so that nothing after it can be written: the output stays a prefix.
                outcome, result = future.result()
                summary.judged_in_run += 1
                if outcome == "annotated":
                    doc = {**doc, "feedback": result.to_record()}
                    reasoning, judge = result.reasoning, result.judge
                elif outcome == "error":
                    doc = {**doc, "feedback_error": result}
                    logger.warning("document %r: %s", doc["id"], result)
            pending.popleft()
            writer.write(doc, reasoning, judge)
            summary.add(doc, outcome)
            bar.update(errors=int(outcome == "error"))

    try:
        for source in _todo(iter_documents(inputs), done):
            doc = source.doc
            if doc.get("feedback") is not None and not overwrite:
                pending.append((doc, None, "kept"))
            elif not is_selected(doc["id"], fraction, seed):
                pending.append((doc, None, "unselected"))
            else:
                doc = {k: v for k, v in doc.items() if k not in ("feedback", "feedback_error")}
                pending.append((doc, pool.submit(_judge, critic, doc), None))
            write_head(keep_at_most=window)
        write_head(keep_at_most=0)
    except BaseException:
        # Judge gone, Ctrl-C, or a critic bug: stop judging, keep every finished document
        # that is next in order, and leave the rest for the resume.
        critic.close()
        pool.shutdown(workers)
        try:
            write_head(keep_at_most=None)
        except BaseException:  # the head itself failed: it is redone on resume
            pass
        raise
    finally:
        writer.close()
        bar.close(final_line=True)
        summary.elapsed_s = time.monotonic() - started
    pool.shutdown(workers)
    return summary


def _todo(sources: Iterable, done: set[str]) -> Iterable:
    """Input documents whose ids are not yet in the output."""
    for source in sources:
        if source.key not in done:
            yield source
