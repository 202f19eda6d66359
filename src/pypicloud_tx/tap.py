"""``twist pypicloud --config FILE [--listen ENDPOINT]``."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from pypicloud_tx.config.loader import load_settings
from pypicloud_tx.errors import ConfigError

DEFAULT_LISTEN = "tcp:port=6543:interface=127.0.0.1"


class Options(usage.Options):
    """Command-line options of the ``pypicloud`` twist plugin."""

    synopsis = "--config FILE [--listen ENDPOINT]"
    optFlags = [  # noqa: RUF012 - twisted.python.usage reads these class attributes
        ["access-log", None, "Log one line per request (combined log format)."],
    ]
    optParameters = [  # noqa: RUF012
        ["config", "c", None, "The configuration file (INI, pypicloud's option names)."],
        [
            "listen",
            "l",
            None,
            "A Twisted endpoint to listen on (default: [server:main] of the config, else "
            f"{DEFAULT_LISTEN}). Examples: tcp:8080, systemd:domain=INET:index=0, "
            "ssl:443:privateKey=key.pem:certKey=cert.pem",
        ],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required (try example.conf)")
        try:
            self["settings"] = load_settings(self["config"])
        except ConfigError as e:
            raise usage.UsageError(f"{self['config']}: {e.message}") from None
        self["endpoint"] = self["listen"] or self["settings"].listen or DEFAULT_LISTEN
        _check_endpoint(self["endpoint"])


def _check_endpoint(description: str) -> None:
    """Refuse an endpoint description Twisted cannot parse, before anything starts.

    Parsing builds the endpoint without listening (against a stand-in reactor), so a typo or
    a missing TLS key file is a usage error instead of a traceback at start-up.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    try:
        serverFromString(MemoryReactor(), description)
    except Exception as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        if description.startswith("systemd:") and isinstance(e, IndexError):
            reason = "no such socket was passed by systemd (LISTEN_FDS)"
        raise usage.UsageError(f"--listen {description}: {reason}") from None


def makeService(options: Options) -> IService:
    """The server: thread pools, then the backends and the listening site (started in order)."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    from pypicloud_tx.application import (
        FallbackStopper,
        IndexServer,
        OrderedServices,
        ThreadPools,
        build_backends,
        build_fallback,
        build_index,
        build_sessions,
        make_authenticator,
    )
    from pypicloud_tx.metrics import Metrics
    from pypicloud_tx.runtime import Runtime
    from pypicloud_tx.web.context import WebContext
    from pypicloud_tx.web.draining import InFlight
    from pypicloud_tx.web.requestlog import install_log_context
    from pypicloud_tx.web.root import IndexSite, build_resource

    _forward_stdlib_logging()
    install_log_context()  # request_id on the events of a request (before twist's log file)
    settings = options["settings"]
    root = OrderedServices()
    pools = ThreadPools(reactor)
    pools.setServiceParent(root)
    runtime = Runtime(reactor=reactor, threads=pools, here=settings.here, settings=settings)
    metrics = Metrics() if settings.metrics else None
    backends = build_backends(settings, runtime, metrics=metrics)
    index = build_index(settings, backends, runtime)
    fallback = build_fallback(
        settings, index, runtime, spool_dir=tempfile.gettempdir(), metrics=metrics
    )
    if fallback.mode != "none":
        # Closes the upstream pool, after the server (children stop in reverse order).
        FallbackStopper(fallback).setServiceParent(root)
    ctx = WebContext(
        index=index,
        auth=make_authenticator(backends, reactor),
        settings=settings,
        run_blocking=pools("uploads", 4),
        spool_dir=tempfile.gettempdir(),
        fallback=fallback,
        sessions=build_sessions(settings, pools("sessions", 4)),
        metrics=metrics,
    )
    site = IndexSite(build_resource(ctx), settings.max_upload_size, spool_dir=ctx.spool_dir)
    site.access_log = bool(options["access-log"])
    site.metrics = metrics
    # On stop: stop listening, then give requests in progress pypi.shutdown_grace to finish.
    in_flight = InFlight(site, reactor, settings.shutdown_grace)
    endpoint = serverFromString(reactor, options["endpoint"])
    server = IndexServer(backends, index, lambda: in_flight.listen(endpoint), reactor)
    server.setServiceParent(root)
    reactor.addSystemEventTrigger("after", "shutdown", _exit_if_listen_failed, server)
    return root


def _exit_if_listen_failed(server: Any) -> None:
    """``twist`` exits 0 after any orderly stop; a server that never listened (port taken,
    bad endpoint) must exit non-zero so systemd and scripts see the failure."""
    if server.listen_failed:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _forward_stdlib_logging() -> None:
    """Send warnings of libraries that use :mod:`logging` (SQLAlchemy, boto3) to twisted.logger."""
    from twisted.logger import Logger

    class _Forward(logging.Handler):
        _log = Logger(namespace="stdlib")

        def emit(self, record: logging.LogRecord) -> None:
            self._log.emit(
                _LEVELS.get(record.levelno, _LEVELS[logging.WARNING]),
                "{name}: {message}",
                name=record.name,
                message=record.getMessage(),
            )

    root = logging.getLogger()
    if not any(type(h).__name__ == "_Forward" for h in root.handlers):
        root.addHandler(_Forward())
        root.setLevel(logging.WARNING)


def _levels() -> dict[int, Any]:
    from twisted.logger import LogLevel

    return {
        logging.DEBUG: LogLevel.debug,
        logging.INFO: LogLevel.info,
        logging.WARNING: LogLevel.warn,
        logging.ERROR: LogLevel.error,
        logging.CRITICAL: LogLevel.critical,
    }


_LEVELS = _levels()
