"""``pypicloud-tx check CONFIG``: load a configuration, start each backend and ask it whether
it works, as a deploy pipeline's gate before the server is (re)started.

Each backend (storage, cache, access) is built, started (as the server would: a missing
bucket or table is created) and asked for its ``check_health()``, all three at once and each
within ``--timeout`` seconds; the listen endpoint is parsed the way ``twist pypicloud`` parses
it.  One line per check goes to stdout (``storage: ok (file /srv/packages)``,
``cache: FAILED: ... (redis redis://db:6379/0)``), or one JSON object with ``--json``.  Exit
status: 0 when everything is ok, 1 when a check failed, 2 when the configuration cannot be
loaded.  Descriptions and messages never carry a password.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.task import LoopingCall

from pypicloud_tx.config.model import BackendChoice, Settings
from pypicloud_tx.errors import ConfigError, PPCError
from pypicloud_tx.scripts.runner import progress

#: Seconds each backend gets to start and answer its health check.
DEFAULT_TIMEOUT = 30.0
#: Seconds between "still waiting" lines on stderr.
PROGRESS_EVERY = 5.0
#: The backends of a configuration, in the order they are reported.
LABELS = ("storage", "cache", "access")


def add_check_command(commands: Any) -> None:
    check = commands.add_parser(
        "check",
        help="load a config, connect to every backend and report (for deploy pipelines)",
        description="Load CONFIG, build and start its storage, cache and access backend "
        "(as the server does at start-up: a missing bucket, table or folder is created) "
        "and run each one's health check, all within --timeout seconds; check that the "
        "listen endpoint parses.  One line per check on stdout (or JSON with --json).  Exit "
        "status 0 when everything is ok, 1 when anything failed, 2 when the configuration "
        "cannot be loaded.",
    )
    check.add_argument("config", help="the server's configuration file")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    check.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"time each backend gets to start and answer (default {DEFAULT_TIMEOUT:g})",
    )
    check.add_argument(
        "--listen",
        metavar="ENDPOINT",
        default=None,
        help="the endpoint twist will be given with --listen (default: [server:main] of "
        "the config, else twist's default)",
    )
    check.set_defaults(func=_check)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


# -- results ------------------------------------------------------------------------------------


@attrs.frozen
class CheckResult:
    """The outcome of one check.

    :ivar label: ``storage``, ``cache``, ``access`` or ``listen``.
    :ivar backend: the backend's name as configured (``file``, ``redis``...) or the endpoint.
    :ivar detail: where it points, without secrets (``file /srv/packages``).
    :ivar message: why it failed ("" when it is ok, unless the backend said more).
    """

    label: str
    ok: bool
    backend: str
    detail: str
    message: str = ""

    def line(self) -> str:
        if self.ok:
            return f"{self.label}: ok ({self.detail})"
        return f"{self.label}: FAILED: {self.message} ({self.detail})"

    def as_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "backend": self.backend,
            "detail": self.detail,
            "message": self.message,
        }


def report_lines(results: Sequence[CheckResult]) -> str:
    return "".join(r.line() + "\n" for r in results)


def report_json(path: str, results: Sequence[CheckResult]) -> str:
    return (
        json.dumps(
            {
                "config": path,
                "ok": all(r.ok for r in results),
                "checks": {r.label: r.as_json() for r in results},
            },
            indent=2,
        )
        + "\n"
    )


# -- describing a backend without its secrets ---------------------------------------------------


def safe_url(url: str) -> str:
    """``url`` without its password, query and fragment (any of them may hold a secret)."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or not scheme:
        return "(not a URL)"
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        authority = f"{user}:***@{host}" if colon else f"{user}@{host}"
    return f"{scheme}://{authority}{slash}{path}"


def describe(choice: BackendChoice, settings: Settings) -> str:
    """Where a configured backend points (``file /srv/packages``, ``s3 bucket b at URL``),
    from its options; never a credential."""
    options = choice.options

    def value(name: str) -> Any:
        return getattr(options, name, None)

    words = [choice.name]
    if value("dir") is not None:
        path = os.path.expanduser(str(value("dir")))
        words.append(os.path.normpath(os.path.join(settings.here, path)))
    if value("bucket") is not None:
        words.append(f"bucket {value('bucket')}")
        endpoint = value("endpoint_url") or value("gcp_api_endpoint")
        if endpoint:
            words.append(f"at {safe_url(str(endpoint))}")
        if value("region_name"):
            words.append(f"in {value('region_name')}")
    elif value("tablenames") is not None:  # DynamoDB
        namespace = value("namespace") or ""
        words.append("tables " + ", ".join(namespace + t for t in value("tablenames")))
        if value("host"):
            words.append(f"at {value('host')}:{value('port')}")
        elif value("region_name"):
            words.append(f"in {value('region_name')}")
    url = value("url") if value("url") is not None else value("db__url")
    if url is not None:
        # A parsed Redis URL prints without its password; a text URL is cleaned here.
        words.append(str(url) if not isinstance(url, str) else safe_url(url))
    if choice.name == "config" and choice.cls.__module__.endswith("access.config"):
        count = len(settings.access_lists.users)
        words.append(f"{count} user{'' if count == 1 else 's'}")
    return " ".join(words)


# -- the checks ---------------------------------------------------------------------------------


@attrs.define
class Checker:
    """Builds, starts and health-checks the backends of ``settings``, each within ``timeout``.

    :param runtime: what the backends are built with (thread pools, reactor).
    :param reactor: the clock the timeouts run on.
    :param waiting: called with the labels still running every :data:`PROGRESS_EVERY` seconds.
    """

    settings: Settings
    runtime: Any
    reactor: Any
    timeout: float = DEFAULT_TIMEOUT
    waiting: Callable[[list[str]], None] = lambda labels: None
    #: The endpoint twist will be given (``None``: the config's, else twist's default).
    listen: str | None = None
    #: Backends that started and answered in time, to be stopped afterwards.
    started: list[Any] = attrs.field(factory=list)
    #: Labels of the backends that did not answer in time (their threads may still be busy).
    stuck: list[str] = attrs.field(factory=list)

    async def run(self, emit: Callable[[CheckResult], None]) -> list[CheckResult]:
        """Check every backend at once; ``emit`` each result in :data:`LABELS` order as soon
        as it and those before it are known; then the listen endpoint."""
        choices = {
            "storage": self.settings.storage,
            "cache": self.settings.cache,
            "access": self.settings.access,
        }
        running = set(LABELS)
        pending = {label: self._timed(label, choices[label]) for label in LABELS}
        for label, answered in pending.items():
            answered.addBoth(_passing(running.discard, label))

        def still() -> None:
            self.waiting([label for label in LABELS if label in running])

        ticker = LoopingCall(still)
        ticker.clock = self.reactor
        ticker.start(PROGRESS_EVERY, now=False)
        results = []
        try:
            for label in LABELS:
                result = await pending[label]
                emit(result)
                results.append(result)
        finally:
            ticker.stop()
        listen = check_listen(self.settings, self.listen)
        emit(listen)
        return [*results, listen]

    def _timed(self, label: str, choice: BackendChoice) -> Deferred[CheckResult]:
        detail = describe(choice, self.settings)
        work = Deferred.fromCoroutine(self._one(label, choice, detail))

        def late(failure: Any) -> CheckResult:
            failure.trap(TimeoutError, CancelledError)
            self.stuck.append(label)
            return CheckResult(
                label,
                False,
                choice.name,
                detail,
                f"no answer within {self.timeout:g}s (is the service reachable?)",
            )

        return work.addTimeout(self.timeout, self.reactor).addErrback(late)

    async def _one(self, label: str, choice: BackendChoice, detail: str) -> CheckResult:
        def failed(message: str) -> CheckResult:
            return CheckResult(label, False, choice.name, detail, _one_line(message))

        try:
            backend = choice.cls.from_config(choice.options, self.runtime)
        except PPCError as e:
            return failed(f"cannot be built: {e.message}")
        except CancelledError:
            raise
        except Exception as e:
            return failed(f"cannot be built: {type(e).__name__}: {e}")
        start = getattr(backend, "start", None)
        try:
            if start is not None:
                await start()
        except PPCError as e:
            return failed(f"cannot start: {e.message}")
        except CancelledError:
            raise
        except Exception as e:
            return failed(f"cannot start: {type(e).__name__}: {e}")
        self.started.append(backend)
        try:
            ok, message = await backend.check_health()
        except PPCError as e:
            return failed(e.message)
        except CancelledError:
            raise
        except Exception as e:
            return failed(f"{type(e).__name__}: {e}")
        if not ok:
            return failed(message or "unhealthy (no reason given)")
        return CheckResult(label, True, choice.name, detail, _one_line(message or ""))

    async def stop(self) -> None:
        """Stop the backends that started (errors are ignored: the report is made)."""
        for backend in reversed(self.started):
            stop = getattr(backend, "stop", None)
            if stop is None:
                continue
            with contextlib.suppress(Exception):  # stopping must not change the verdict
                await stop()


def _passing(f: Callable[[str], None], label: str) -> Callable[[Any], Any]:
    """A Deferred callback that calls ``f(label)`` and passes the result on."""

    def call(result: Any) -> Any:
        f(label)
        return result

    return call


def check_listen(settings: Settings, listen: str | None = None) -> CheckResult:
    """Whether the endpoint ``twist pypicloud`` would listen on parses (as twist checks it).

    A ``systemd:`` endpoint can only be built when systemd passes the socket, so only its
    syntax is looked at here.
    """
    from twisted.python import usage

    from pypicloud_tx.tap import DEFAULT_LISTEN, _check_endpoint

    endpoint = listen or settings.listen or DEFAULT_LISTEN
    kind = endpoint.partition(":")[0]
    if endpoint.startswith("systemd:"):
        return CheckResult(
            "listen", True, "systemd", f"{endpoint}; systemd passes the socket: not opened here"
        )
    try:
        _check_endpoint(endpoint)
    except usage.UsageError as e:
        return CheckResult("listen", False, kind, endpoint, _one_line(str(e)))
    return CheckResult("listen", True, kind, endpoint)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- running it ---------------------------------------------------------------------------------


def with_runtime(settings: Settings, work: Callable[..., Coroutine[Any, Any, int]]) -> int:
    """Run ``await work(runtime, reactor)`` (an exit status) on a reactor with thread pools
    started for ``settings``; the pools are stopped afterwards.  ``work`` may end the process
    itself (:func:`os._exit`) when a thread cannot be waited for."""
    from twisted.internet.task import react

    status: list[int] = []

    def main(reactor: Any) -> Deferred[None]:
        async def run() -> None:
            from pypicloud_tx.application import ThreadPools
            from pypicloud_tx.runtime import Runtime

            pools = ThreadPools(reactor)
            pools.startService()
            runtime = Runtime(reactor=reactor, threads=pools, here=settings.here, settings=settings)
            try:
                status.append(await work(runtime, reactor))
            finally:
                await pools.stopService()

        return Deferred.fromCoroutine(run())

    try:
        react(main, [])
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return status[0] if status else 1


def _check(args: argparse.Namespace) -> int:
    from pypicloud_tx.config.loader import load_settings

    path = os.path.abspath(args.config)
    try:
        settings = load_settings(path)
    except ConfigError as e:
        if args.json:
            sys.stdout.write(json.dumps({"config": path, "ok": False, "error": e.message}) + "\n")
        print(f"error: {e.message}", file=sys.stderr)
        return 2

    def emit(result: CheckResult) -> None:
        if not args.json:
            sys.stdout.write(result.line() + "\n")
            sys.stdout.flush()

    def waiting(labels: list[str]) -> None:
        progress(f"... still waiting for {', '.join(labels)}")

    async def work(runtime: Any, reactor: Any) -> int:
        checker = Checker(settings, runtime, reactor, args.timeout, waiting, args.listen)
        results = await checker.run(emit)
        if args.json:
            sys.stdout.write(report_json(path, results))
        status = 0 if all(r.ok for r in results) else 1
        if checker.stuck:
            # A thread is still blocked in a call that did not answer: stopping the pools
            # would wait for it, and a check must never hang a pipeline.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
        await checker.stop()
        return status

    return with_runtime(settings, work)
