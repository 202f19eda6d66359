"""``pypicloud-tx export`` and ``import``: move users, groups and permissions between access
backends in pypicloud's format (gzip-compressed JSON)."""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from typing import Any

from pypicloud_tx.interfaces import IMutableAccessBackend
from pypicloud_tx.scripts.runner import progress, with_backends


def add_acl_commands(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="write the access control data (users, groups, permissions) as gzip JSON",
        description="Dump the configured access backend in pypicloud's export format.",
    )
    export.add_argument("config", help="the server's configuration file")
    export.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    export.set_defaults(func=_export)
    load = commands.add_parser(
        "import",
        help="load access control data written by export (or pypicloud's ppc-export)",
        description="Add the users, groups and permissions of an export to the configured "
        "access backend, which must be a mutable one (e.g. pypi.auth = sql). Existing users "
        "are kept as they are; running it twice changes nothing more.",
    )
    load.add_argument("config", help="the server's configuration file")
    load.add_argument("-i", "--input", default="-", help="file to read (default: stdin)")
    load.set_defaults(func=_import)


def _export(args: argparse.Namespace) -> int:
    from pypicloud_tx.config.loader import load_settings

    settings = load_settings(args.config)

    async def work(backends: Any, index: Any, reactor: Any) -> int:
        data = await backends.access.dump()
        blob = gzip.compress(json.dumps(data, sort_keys=True).encode("utf-8"))
        if args.output == "-":
            if sys.stdout.isatty():
                print("error: the export is binary (gzip); use -o FILE or a pipe", file=sys.stderr)
                return 2
            sys.stdout.buffer.write(blob)
            sys.stdout.flush()
        else:
            with open(args.output, "wb") as f:
                f.write(blob)
        progress(_counts("exported", data))
        return 0

    return with_backends(settings, work)


def _import(args: argparse.Namespace) -> int:
    from pypicloud_tx.config.loader import load_settings

    settings = load_settings(args.config)
    raw = sys.stdin.buffer.read() if args.input == "-" else _read(args.input)
    try:
        data = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    except (OSError, ValueError) as e:
        print(f"error: the input is not an export (gzip JSON): {e}", file=sys.stderr)
        return 2
    if not isinstance(data, dict):
        print("error: the input is not an export (expected a JSON object)", file=sys.stderr)
        return 2

    async def work(backends: Any, index: Any, reactor: Any) -> int:
        access = backends.access
        if not IMutableAccessBackend.providedBy(access):
            print(
                f"error: pypi.auth = {settings.access.name} cannot be changed; import into a "
                "mutable backend such as pypi.auth = sql",
                file=sys.stderr,
            )
            return 2
        await access.load(data)
        progress(_counts("imported", data))
        return 0

    return with_backends(settings, work)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _counts(verb: str, data: dict[str, Any]) -> str:
    packages = data.get("packages") or {}
    grants = sum(len(v) for part in packages.values() for v in part.values())
    return (
        f"{verb} {len(data.get('users') or [])} users, {len(data.get('groups') or {})} groups, "
        f"{grants} package permissions"
    )
