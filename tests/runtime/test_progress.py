"""The one progress display: a tqdm bar on a terminal, plain periodic lines in a log."""

from __future__ import annotations

import io
import re

from megatron_ixt.runtime.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_every_n_documents_with_rates_and_eta():
    lines: list[str] = []
    progress = Progress("Processed", total_disk_bytes=1000, every_docs=100, show_bytes=True, show_tokens=True,
                        emit=lines.append, stream=io.StringIO())
    for step in range(1, 11):  # 10 batches of 30 documents: lines at 100, 200, 300 (one each)
        progress.update(30, nbytes=3000, tokens=600, disk_bytes_done=100 * step)
    assert [int(re.match(r"Processed (\d+) documents", line).group(1)) for line in lines] == [120, 210, 300]
    assert re.fullmatch(r"Processed 120 documents \([\d.]+ docs/s, [\d.]+ MB/s, [\d.]+ M tokens/s\), "
                        r"40% of input, ETA \d+:\d\d:\d\d", lines[0]), lines[0]
    assert progress._bar is None  # no tqdm in a log


def test_plain_lines_every_s_with_a_known_total_and_resume():
    lines: list[str] = []
    progress = Progress("Annotated", total=10, already_done=4, every_s=0.0, emit=lines.append, stream=io.StringIO())
    progress.update(errors=1)
    assert re.fullmatch(r"Annotated 5/10 documents \([\d.]+ docs/s\), 50%, ETA \d+:\d\d:\d\d, 1 errors", lines[-1])
    assert progress.rates()[0] > 0 and progress.documents - progress.start_done == 1  # resumed ones left out


def test_terminal_gets_a_tqdm_bar():
    terminal = _Terminal()
    progress = Progress("Annotated", total=3, stream=terminal, emit=lambda line: None)
    assert progress._bar is not None
    for _ in range(3):
        progress.update()
    progress.close()
    output = terminal.getvalue()
    assert "Annotated" in output and "3/3" in output and "docs/s" in output


def test_disabled_is_silent():
    terminal = _Terminal()
    lines: list[str] = []
    progress = Progress("x", total=2, every_s=0.0, stream=terminal, emit=lines.append, enabled=False)
    progress.update()
    progress.close(final_line=True)
    assert not lines and not terminal.getvalue()
