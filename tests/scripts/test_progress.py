"""Progress on stderr: a bar redrawn in place on a terminal, plain lines elsewhere, and stages
that count up to a total from any thread."""

from __future__ import annotations

import io
import sys
import threading

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.scripts.progress import BAR_EVERY, ProgressLine, StageProgress, bar


class ProgressCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.stderr = io.StringIO()
        self.stdout = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.patch(sys, "stdout", self.stdout)


class BarTests(SynchronousTestCase):
    def test_bar(self) -> None:
        """Twenty cells, filled in proportion, clamped to empty and full."""
        self.assertEqual(bar(0), "[" + "." * 20 + "]")
        self.assertEqual(bar(0.5), "[" + "#" * 10 + "." * 10 + "]")
        self.assertEqual(bar(1), "[" + "#" * 20 + "]")
        self.assertEqual(bar(-1), bar(0))
        self.assertEqual(bar(7), bar(1))


class ProgressLineTests(ProgressCase):
    def test_terminal_bar_redrawn_in_place(self) -> None:
        """On a terminal the bar is redrawn on one line (carriage return, erase) every
        BAR_EVERY seconds, and the line is ended when the work stops."""
        state = {"fraction": 0.0}
        line = ProgressLine(
            self.clock, 5, lambda: (state["fraction"], f"{state['fraction']:.0%}"), tty=True
        )
        line.start()
        state["fraction"] = 0.5
        self.clock.advance(BAR_EVERY)
        state["fraction"] = 1.0
        line.stop()
        out = self.stderr.getvalue()
        self.assertEqual(out.count("\r"), 3, repr(out))
        self.assertIn("[" + "#" * 10 + "." * 10 + "] 50%\x1b[K", out)
        self.assertTrue(out.endswith("[" + "#" * 20 + "] 100%\x1b[K\n"), repr(out))

    def test_messages_keep_off_the_bar(self) -> None:
        """A message first erases the bar, goes on a line of its own, and the bar comes back
        under it; stdout lines go to stdout."""
        line = ProgressLine(self.clock, 5, lambda: (0.25, "working"), tty=True)
        line.start()
        line.say("copied a.whl")
        line.say("a result", stdout=True)
        line.stop()
        out = self.stderr.getvalue()
        self.assertIn("\r\x1b[Kcopied a.whl\n\r[", out)
        self.assertEqual(self.stdout.getvalue(), "a result\n")

    def test_plain_lines_elsewhere(self) -> None:
        """Not a terminal: no bar, no control characters; a "... status, Ns" line every
        ``every`` seconds."""
        line = ProgressLine(self.clock, 2, lambda: (0.5, "half"), tty=False)
        line.start()
        self.clock.advance(1)
        self.assertEqual(self.stderr.getvalue(), "")
        self.clock.advance(1)
        self.clock.advance(2)
        line.stop()
        self.clock.advance(10)
        self.assertEqual(self.stderr.getvalue(), "... half, 2.0s\n... half, 4.0s\n")


class StageProgressTests(ProgressCase):
    def test_stages_plain(self) -> None:
        """Each stage is announced, reports done/total and percent while it runs, and ends
        with a line saying how many in how long."""
        report = StageProgress(self.clock, 1, "files", tty=False)
        report.stage("reading storage")
        report.update(30, 120)
        self.clock.advance(1)
        report.update(120, 120)
        self.clock.advance(0.5)
        report.stage("writing the cache")
        report.update(60, 120)
        self.clock.advance(1)
        report.finish()
        report.finish()  # once is enough; a second call adds nothing
        self.assertEqual(
            self.stderr.getvalue().splitlines(),
            [
                "reading storage ...",
                "... reading storage: 30/120 files (25%), 1.0s",
                "reading storage: 120 files in 1.5s",
                "writing the cache ...",
                "... writing the cache: 60/120 files (50%), 1.0s",
                "writing the cache: 60 files in 1.0s",
            ],
        )

    def test_unknown_total(self) -> None:
        """Before a stage knows its total, the count alone is shown."""
        report = StageProgress(self.clock, 1, "files", tty=False)
        report.stage("reading storage")
        self.assertEqual(report.status(), (0.0, "reading storage: 0 files"))

    def test_terminal_bar(self) -> None:
        """On a terminal the stage's bar fills up as updates come."""
        report = StageProgress(self.clock, 5, "files", tty=True)
        report.stage("writing the cache")
        report.update(3, 4)
        self.clock.advance(BAR_EVERY)
        report.finish()
        out = self.stderr.getvalue()
        self.assertIn("[" + "#" * 15 + "." * 5 + "] writing the cache: 3/4 files (75%)", out)
        self.assertTrue(out.endswith("writing the cache: 3 files in 0.2s\n"), repr(out))

    def test_updates_from_other_threads(self) -> None:
        """Worker threads may report (a SQL or boto3 backend writes in the thread pool): the
        numbers are recorded and drawn by the reactor's thread."""
        report = StageProgress(self.clock, 1, "files", tty=False)
        report.stage("writing the cache")
        workers = [
            threading.Thread(target=report.update, args=(n, 400)) for n in range(100, 401, 100)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(10)
        fraction, text = report.status()
        self.assertTrue(text.startswith("writing the cache: "), text)
        self.assertIn(fraction, (0.25, 0.5, 0.75, 1.0))
