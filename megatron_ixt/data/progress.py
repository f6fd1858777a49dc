"""Progress lines for preprocessing: docs/s, MB/s, tokens/s and an ETA."""

from __future__ import annotations

import datetime
import logging
import time

logger = logging.getLogger("megatron_ixt.data.preprocess")


def format_duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


class ProgressLog:
    """Logs one line each time another `interval` documents are done.

    Rates count from the start of processing (after start-up), as Megatron-LM's tool does.
    The ETA uses the share of the input files (bytes on disk) read so far, so it also
    works for compressed input.
    """

    def __init__(self, interval: int, total_disk_bytes: int, what: str = "Processed"):
        self.interval = interval
        self.total_disk_bytes = total_disk_bytes
        self.what = what
        self.start = time.perf_counter()
        self.documents = 0
        self.nbytes = 0
        self.tokens = 0
        self._next_report = interval

    def update(self, documents: int, nbytes: int, tokens: int, disk_bytes_done: int) -> None:
        self.documents += documents
        self.nbytes += nbytes
        self.tokens += tokens
        if self.documents >= self._next_report:
            logger.info(self.line(disk_bytes_done))
            # Batches may jump several intervals at once: report once, at the next multiple.
            self._next_report = (self.documents // self.interval + 1) * self.interval

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)

    def rates(self) -> tuple[float, float, float]:
        """docs/s, MB/s (of uncompressed input, 10^6 bytes), tokens/s."""
        elapsed = self.elapsed()
        return self.documents / elapsed, self.nbytes / elapsed / 1e6, self.tokens / elapsed

    def line(self, disk_bytes_done: int) -> str:
        docs_per_s, mb_per_s, tokens_per_s = self.rates()
        text = (
            f"{self.what} {self.documents} documents "
            f"({docs_per_s:.0f} docs/s, {mb_per_s:.2f} MB/s, {tokens_per_s / 1e6:.2f} M tokens/s)"
        )
        if self.total_disk_bytes and disk_bytes_done:
            share = min(disk_bytes_done / self.total_disk_bytes, 1.0)
            remaining = self.elapsed() * (1 - share) / share
            text += f", {100 * share:.0f}% of input, ETA {format_duration(remaining)}"
        return text
