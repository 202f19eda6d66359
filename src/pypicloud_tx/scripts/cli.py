"""``pypicloud-tx <command>``: the command-line tools.

Each command that pypicloud had is also installed under pypicloud's name
(``ppc-gen-password``, ``ppc-export``, ``ppc-import``, ``ppc-migrate``); ``rebuild`` is new
(pypicloud only had ``/admin/rebuild``).
Errors go to stderr with a non-zero exit status; progress goes to stderr too, so stdout
carries only the command's result.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from typing import Any

from pypicloud_tx import __version__
from pypicloud_tx.errors import ConfigError
from pypicloud_tx.scripts.acl import add_acl_commands
from pypicloud_tx.scripts.check import add_check_command
from pypicloud_tx.scripts.make_config import add_make_config_command
from pypicloud_tx.scripts.migrate import add_migrate_command
from pypicloud_tx.scripts.runner import progress, with_backends


def _gen_password(args: argparse.Namespace) -> int:
    from pypicloud_tx.domain.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Verify: "):
            print("error: the passwords do not match", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("error: the password is empty", file=sys.stderr)
        return 1
    print(hash_password(password, args.rounds))
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    from pypicloud_tx.config.loader import load_settings
    from pypicloud_tx.scripts.progress import StageProgress

    settings = load_settings(args.config)

    async def work(backends: Any, index: Any, reactor: Any) -> int:
        started = reactor.seconds()
        progress(
            f"rebuilding the cache ({settings.cache.name}) from storage ({settings.storage.name})"
        )
        report = StageProgress(reactor, args.progress_every, "files")
        try:
            count = await index.rebuild(report)
        finally:
            report.finish()
        progress(f"cache rebuilt: {count} files in {reactor.seconds() - started:.1f}s")
        return 0

    return with_backends(settings, work)


def _rounds(text: str) -> int:
    from pypicloud_tx.domain.passwords import check_rounds

    try:
        return check_rounds(int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            str(e) if text.strip().lstrip("-").isdigit() else f"{text!r} is not a whole number"
        ) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="pypicloud-tx", description="pypicloud-tx tools")
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = commands.add_parser(
        "gen-password",
        help="hash a password for a user.<name> line of the config",
        description="Read a password (prompted twice on a terminal, else one line of stdin) "
        "and print its hash for a user.<name> = ... line.",
    )
    gen.add_argument(
        "-r",
        "--rounds",
        type=_rounds,
        default=None,
        help="hash rounds, as auth.rounds (default: passlib's, 656000)",
    )
    gen.set_defaults(func=_gen_password)
    rebuild = commands.add_parser(
        "rebuild",
        help="rebuild the cache from storage",
        description="Read every file in storage and make the cache hold exactly those.",
    )
    rebuild.add_argument("config", help="the server's configuration file")
    rebuild.add_argument(
        "--progress-every",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="how often to say the rebuild is still running (default 5)",
    )
    rebuild.set_defaults(func=_rebuild)
    add_acl_commands(commands)
    add_migrate_command(commands)
    add_make_config_command(commands)
    add_check_command(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _alias(command: str) -> int:
    return main([command, *sys.argv[1:]])


def gen_password_alias() -> int:
    """``ppc-gen-password``."""
    return _alias("gen-password")


def export_alias() -> int:
    """``ppc-export``."""
    return _alias("export")


def import_alias() -> int:
    """``ppc-import``."""
    return _alias("import")


def migrate_alias() -> int:
    """``ppc-migrate``."""
    return _alias("migrate")


def make_config_alias() -> int:
    """``ppc-make-config``."""
    return _alias("make-config")


if __name__ == "__main__":
    sys.exit(main())
