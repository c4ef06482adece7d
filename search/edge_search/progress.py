"""Progress of a long run: a rich bar on a terminal, plain lines otherwise (CI logs, pipes)."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _fmt_s(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class RunProgress:
    """Shows trials done of total, elapsed, ETA, the size of the front and the best so far."""

    def __init__(self, total: int, done: int = 0, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = done
        self.start_done = done
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()
        self.tty = self.stream.isatty()
        self._progress: Progress | None = None
        self._task_id: int | None = None

    def __enter__(self) -> RunProgress:
        if self.tty:
            self._progress = Progress(
                TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=Console(file=self.stream), transient=False)
            self._progress.__enter__()
            self._task_id = self._progress.add_task("", total=self.total, completed=self.done)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(et, ev, tb)

    def eta_s(self) -> float | None:
        finished_here = self.done - self.start_done
        if finished_here <= 0:
            return None
        rate = (time.monotonic() - self.t0) / finished_here
        return rate * (self.total - self.done)

    def update(self, done: int, event: str, front_size: int, best: str, tally: str = "") -> None:
        """A trial finished: `done` distinct configurations evaluated so far; `tally` counts the
        others (``failed 3 (transform ValueError 3) · duplicates 5``)."""
        self.done = done
        if self._progress is not None and self._task_id is not None:
            self._progress.update(self._task_id, completed=min(done, self.total),  # type: ignore[arg-type]
                                  description=f"front {front_size} · {best}" + (f" · {tally}" if tally else ""))
            self._progress.console.print(event, highlight=False)
            return
        eta = self.eta_s()
        eta_txt = _fmt_s(eta) if eta is not None else "?"
        print(f"[{done:>3}/{self.total}] {event} | front {front_size} | {best} | " + (f"{tally} | " if tally else "")
              + f"elapsed {_fmt_s(time.monotonic() - self.t0)} eta {eta_txt}", file=self.stream, flush=True)

    def note(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, highlight=False)
        else:
            print(text, file=self.stream, flush=True)
