"""Progress of long commands on stderr: a bar redrawn in place on a terminal, plain lines
elsewhere (a log, a CI job), so stdout stays for what a command answers.

:class:`ProgressLine` draws; what is drawn comes from a ``status()`` callable the command gives
it: ``(fraction done, text)``.  :class:`StageProgress` is the status of work in stages that
each count up to a total (a cache rebuild: reading storage, then writing the cache).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.task import LoopingCall

#: Seconds between redraws of a bar on a terminal.
BAR_EVERY = 0.2
BAR_WIDTH = 20


def progress(message: str) -> None:
    """A line of progress (or of an error) on stderr."""
    print(message, file=sys.stderr, flush=True)


def bar(fraction: float) -> str:
    """``[#####...............]`` for ``fraction`` (0 to 1) done."""
    filled = max(0, min(BAR_WIDTH, int(BAR_WIDTH * fraction)))
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}]"


class ProgressLine:
    """Shows ``status()`` on stderr while work runs between :meth:`start` and :meth:`stop`.

    On a terminal a one-line bar is redrawn in place every :data:`BAR_EVERY` seconds; otherwise
    a plain ``... text, 12.3s`` line is printed every ``every`` seconds.  Messages go through
    :meth:`say`, which keeps them off the bar's line.
    """

    def __init__(
        self,
        clock: Any,
        every: float,
        status: Callable[[], tuple[float, str]],
        tty: bool | None = None,
    ) -> None:
        self._clock = clock
        self._status = status
        self._tty = sys.stderr.isatty() if tty is None else tty
        self._every = BAR_EVERY if self._tty else every
        self._ticker: LoopingCall | None = None
        self._started = 0.0
        self._bar_shown = False

    @property
    def elapsed(self) -> float:
        return float(self._clock.seconds() - self._started)

    def start(self) -> None:
        self._started = self._clock.seconds()
        ticker = self._ticker = LoopingCall(self._tick)
        ticker.clock = self._clock
        ticker.start(self._every, now=False)
        self._draw()

    def stop(self) -> None:
        """Stop redrawing; a bar is drawn once more (complete, normally) and its line ended."""
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        self._draw()
        self._end_bar()

    def say(self, line: str, stdout: bool = False) -> None:
        """Print a line (on stdout or stderr) without mangling the bar."""
        if self._bar_shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._bar_shown = False
        if stdout:
            print(line, flush=True)
        else:
            progress(line)
        if self._ticker is not None and self._ticker.running:
            self._draw()

    def _end_bar(self) -> None:
        if self._bar_shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._bar_shown = False

    def _tick(self) -> None:
        if self._tty:
            self._draw()
        else:
            progress(f"... {self._status()[1]}, {self.elapsed:.1f}s")

    def _draw(self) -> None:
        if not self._tty:
            return
        try:
            width = os.get_terminal_size(sys.stderr.fileno()).columns or 80
        except (OSError, ValueError, AttributeError):
            width = 80
        fraction, text = self._status()
        line = f"{bar(fraction)} {text}"
        sys.stderr.write("\r" + line[: max(width - 1, 10)] + "\x1b[K")
        sys.stderr.flush()
        self._bar_shown = True


class StageProgress:
    """Work in stages, each counting ``done`` of ``total`` (a
    :data:`~pypicloud_tx.interfaces.Progress`), shown with a :class:`ProgressLine`.

    :meth:`update` may be called on any thread: it only records the numbers, which the reactor
    thread reads when it draws.
    """

    def __init__(self, clock: Any, every: float, unit: str, tty: bool | None = None) -> None:
        self._unit = unit
        self._lock = threading.Lock()
        self._stage = ""
        self._done = 0
        self._total = 0
        self._stage_started = 0.0
        self._line = ProgressLine(clock, every, self.status, tty)
        self._clock = clock

    def stage(self, name: str) -> None:
        """Begin the stage ``name`` (the previous one, if any, is reported finished)."""
        if self._stage:
            self._line.stop()
            progress(self._finished())
        with self._lock:
            self._stage, self._done, self._total = name, 0, 0
        self._stage_started = self._clock.seconds()
        progress(f"{name} ...")
        self._line.start()

    def update(self, done: int, total: int) -> None:
        with self._lock:
            self._done, self._total = done, total

    def finish(self) -> None:
        """End the last stage."""
        if self._stage:
            self._line.stop()
            progress(self._finished())
            self._stage = ""

    def status(self) -> tuple[float, str]:
        with self._lock:
            done, total, stage = self._done, self._total, self._stage
        if total == 0:
            return 0.0, f"{stage}: {done} {self._unit}"
        percent = 100 * done // total
        return done / total, f"{stage}: {done}/{total} {self._unit} ({percent}%)"

    def _finished(self) -> str:
        seconds = self._clock.seconds() - self._stage_started
        with self._lock:
            done = self._done
        return f"{self._stage}: {done} {self._unit} in {seconds:.1f}s"
