"""Progress of a run over documents: the one implementation, for the data tools and for
feedback annotation.

On a terminal it is a `tqdm` bar, redrawn in place (count, rate, ETA, and the other rates
beside it). Anywhere else (a SLURM log, a pipe) it writes a plain line every `every_docs`
documents or every `every_s` seconds, which is what a log needs:

    Processed 3000 documents (9871 docs/s, 7.66 MB/s, 2.53 M tokens/s), 12% of input, ETA 0:00:21

Rates count from the start of processing (after start-up), as Megatron-LM's tool does, and
leave out documents done before a resume. The ETA uses the share of `total` documents when
the total is known, else the share of the input files' bytes on disk read so far (which also
works for compressed input). `tqdm` is imported only when a bar is shown on a terminal.
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import Callable, Optional, TextIO


def format_duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


def _tokens_rate(tokens_per_s: float) -> str:
    """Millions for the data tools, plain for generation."""
    return f"{tokens_per_s / 1e6:.2f} M tokens/s" if tokens_per_s >= 1e5 else f"{tokens_per_s:.1f} tokens/s"


class Progress:
    """Counts documents (with bytes, tokens and errors) and shows them as the module says."""

    def __init__(self, what: str, *, total: Optional[int] = None, total_disk_bytes: int = 0,
                 already_done: int = 0, every_docs: Optional[int] = None, every_s: Optional[float] = None,
                 show_bytes: bool = False, show_tokens: bool = False,
                 emit: Optional[Callable[[str], None]] = None, stream: Optional[TextIO] = None,
                 enabled: bool = True, unit: str = "documents"):
        self.what = what
        self.unit = unit
        self.short_unit = "docs" if unit == "documents" else unit
        self.total = total
        self.total_disk_bytes = total_disk_bytes
        self.documents = already_done
        self.start_done = already_done
        self.nbytes = self.tokens = self.errors = 0
        self.disk_bytes_done = 0
        self.show_bytes, self.show_tokens = show_bytes, show_tokens
        self.every_docs, self.every_s = every_docs, every_s
        self.stream = stream or sys.stderr
        self.emit = emit or (lambda line: print(line, file=self.stream, flush=True))
        self.enabled = enabled
        self.start = self._last_line = time.perf_counter()
        self._next_docs = (already_done // every_docs + 1) * every_docs if every_docs else None
        self._bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=already_done, desc=what, unit=self.short_unit, file=self.stream,
                             mininterval=0.5, dynamic_ncols=True, smoothing=0.1)

    def update(self, documents: int = 1, *, nbytes: int = 0, tokens: int = 0, errors: int = 0,
               disk_bytes_done: Optional[int] = None) -> None:
        self.documents += documents
        self.nbytes += nbytes
        self.tokens += tokens
        self.errors += errors
        if disk_bytes_done is not None:
            self.disk_bytes_done = disk_bytes_done
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(self._extras(), refresh=False)
            self._bar.update(documents)
            return
        if self._next_docs is not None and self.documents >= self._next_docs:
            # Batches may jump several intervals at once: one line, then the next multiple.
            self._next_docs = (self.documents // self.every_docs + 1) * self.every_docs
            self.emit(self.line())
        elif self.every_s is not None and time.perf_counter() - self._last_line >= self.every_s:
            self._last_line = time.perf_counter()
            self.emit(self.line())

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)

    def rates(self) -> tuple[float, float, float]:
        """docs/s, MB/s (of uncompressed input, 10^6 bytes), tokens/s, in this run."""
        elapsed = self.elapsed()
        return (self.documents - self.start_done) / elapsed, self.nbytes / elapsed / 1e6, self.tokens / elapsed

    def share_done(self) -> Optional[float]:
        """The share of the work done: of `total` documents, else of the input bytes on disk."""
        if self.total:
            return min(self.documents / self.total, 1.0)
        if self.total_disk_bytes and self.disk_bytes_done:
            return min(self.disk_bytes_done / self.total_disk_bytes, 1.0)
        return None

    def eta(self) -> Optional[float]:
        share = self.share_done()
        if share is None or share <= 0:
            return None
        if self.total:
            docs_per_s = self.rates()[0]
            return (self.total - self.documents) / docs_per_s if docs_per_s > 0 else None
        return self.elapsed() * (1 - share) / share

    def _extras(self) -> str:
        docs_per_s, mb_per_s, tokens_per_s = self.rates()
        parts = []
        if self.show_bytes:
            parts.append(f"{mb_per_s:.2f} MB/s")
        if self.show_tokens:
            parts.append(_tokens_rate(tokens_per_s))
        if not self.total:
            share, eta = self.share_done(), self.eta()
            if share is not None:
                parts.append(f"{100 * share:.0f}% of input" + (f", ETA {format_duration(eta)}" if eta is not None else ""))
        if self.errors:
            parts.append(f"{self.errors} errors")
        return ", ".join(parts)

    def line(self) -> str:
        """The plain progress line (also the closing line of a run)."""
        docs_per_s = self.rates()[0]
        rates = [f"{docs_per_s:.1f} {self.short_unit}/s" if docs_per_s < 100 else f"{docs_per_s:.0f} {self.short_unit}/s"]
        if self.show_bytes:
            rates.append(f"{self.rates()[1]:.2f} MB/s")
        if self.show_tokens:
            rates.append(_tokens_rate(self.rates()[2]))
        count = f"{self.documents}/{self.total}" if self.total else f"{self.documents}"
        text = f"{self.what} {count} {self.unit} ({', '.join(rates)})"
        share, eta = self.share_done(), self.eta()
        if share is not None:
            text += f", {100 * share:.0f}%" + ("" if self.total else " of input")
            if eta is not None:
                text += f", ETA {format_duration(eta)}"
        if self.total is not None:  # runs that count errors say so even when there are none
            text += f", {self.errors} errors"
        return text

    def close(self, final_line: bool = False) -> None:
        """Close the bar; with `final_line`, write the closing line (terminal or log)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.enabled and final_line:
            self.emit(self.line())
