"""Running a command-line tool's work with the configured backends started (and stopped)."""

from __future__ import annotations

import sys
from typing import Any

from pypicloud_tx.errors import PPCError
from pypicloud_tx.scripts.progress import progress


def with_backends(settings: Any, work: Any) -> int:
    """Run ``await work(backends, index, reactor)`` (returning an exit status) with the
    configured backends started, then stop them; a :class:`PPCError` becomes status 1."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    status: list[int] = []

    def main(reactor: Any) -> Deferred[None]:
        async def run() -> None:
            from pypicloud_tx.application import (
                ThreadPools,
                build_backends,
                build_index,
                start_backends,
                stop_backends,
            )
            from pypicloud_tx.runtime import Runtime

            pools = ThreadPools(reactor)
            pools.startService()
            runtime = Runtime(reactor=reactor, threads=pools, here=settings.here, settings=settings)
            backends = build_backends(settings, runtime)
            try:
                await start_backends(backends)
                index = build_index(settings, backends, runtime)
                status.append(await work(backends, index, reactor))
            except PPCError as e:
                print(f"error: {e.message}", file=sys.stderr)
                status.append(1)
            finally:
                await stop_backends(backends)
                await pools.stopService()

        return Deferred.fromCoroutine(run())

    try:
        react(main, [])
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return status[0] if status else 1


__all__ = ["progress", "with_backends"]
