"""``pypicloud-tx make-config [-d|-t|-p] [FILE]`` (also ``ppc-make-config``, pypicloud's name):
write a configuration file from one of three templates.

- development (``-d``): packages in a folder and metadata in SQLite next to the file, users in
  the file, anyone may read;
- test (``-t``): everything in memory;
- production (``-p``): logged-in readers only, admins-only uploads, secure session cookies,
  an explicit listen address, long download caching, comments pointing to the docs.

On a terminal each choice is asked for (storage, cache, access backend, admin...), with the
template's answer as the default; with ``--no-input``, or when stdin is not a terminal, the
defaults and the flags are used without asking.  Every question has a flag.  The session and
signing keys are generated; the admin's password is given (``--password``,
``--password-stdin``, or typed twice) or generated and printed once on stderr, and only its
hash is written.  The file is written with mode 0600 and an existing one is only replaced
with ``--force``.  Before anything is written the text is loaded back as the server would load
it, so a written file always starts.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import IO, Any

import attrs

from pypicloud_tx.errors import ConfigError

#: The questions' answers when nothing is said, per template.
TEMPLATES: dict[str, dict[str, str]] = {
    "development": {
        "storage": "file",
        "storage_dir": "%(here)s/packages",
        "cache": "sql",
        "db_url": "sqlite:///%(here)s/db.sqlite",
        "access": "config",
        "listen": "127.0.0.1:6543",
    },
    "test": {
        "storage": "memory",
        "storage_dir": "%(here)s/packages",
        "cache": "memory",
        "db_url": "sqlite:///%(here)s/db.sqlite",
        "access": "config",
        "listen": "127.0.0.1:6543",
    },
    "production": {
        "storage": "file",
        "storage_dir": "/var/lib/pypicloud/packages",
        "cache": "sql",
        "db_url": "sqlite:////var/lib/pypicloud/db.sqlite",
        "access": "config",
        "listen": "127.0.0.1:6543",
    },
}
STORAGES = ("file", "s3", "gcs", "memory")
CACHES = ("sql", "redis", "dynamo", "memory")
ACCESS = ("config", "sql")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_ADMIN = "admin"
#: Wrong answers to one question before giving up (a script typing into a terminal).
MAX_TRIES = 5


class Abort(Exception):
    """make-config stops: ``message`` goes to stderr, ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def add_make_config_command(commands: Any) -> None:
    make = commands.add_parser(
        "make-config",
        help="write a configuration file (development, test or production template)",
        description="Write a configuration file from the development (-d), test (-t) or "
        "production (-p) template, as pypicloud's ppc-make-config did.  On a terminal every "
        "choice is asked for; with --no-input, or when stdin is not a terminal, the template's "
        "defaults and the flags below are used.  Session and signing keys are generated; "
        "the admin's password is hashed (a generated one is printed once on stderr).  The "
        "file is written with mode 0600; an existing file is replaced only with --force.  "
        "Without FILE the configuration goes to stdout.",
    )
    which = make.add_mutually_exclusive_group()
    for flag, long, name in [
        ("-d", "--development", "development"),
        ("-t", "--test", "test"),
        ("-p", "--production", "production"),
    ]:
        which.add_argument(
            flag,
            long,
            dest="template",
            action="store_const",
            const=name,
            help=f"the {name} template",
        )
    make.add_argument("outfile", nargs="?", metavar="FILE", help="file to write (default stdout)")
    make.add_argument(
        "--no-input", action="store_true", help="never ask: use the defaults and the flags"
    )
    make.add_argument("--force", action="store_true", help="replace FILE if it exists")
    storage = make.add_argument_group("storage")
    storage.add_argument("--storage", choices=STORAGES, help="where package files live")
    storage.add_argument("--storage-dir", metavar="DIR", help="storage.dir for file storage")
    storage.add_argument("--bucket", help="storage.bucket for s3 and gcs")
    storage.add_argument("--region", help="storage.region_name (s3, gcs)")
    storage.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="an S3-compatible server (storage.endpoint_url) or a GCS endpoint "
        "(storage.gcp_api_endpoint)",
    )
    storage.add_argument("--aws-access-key-id", metavar="ID", help="s3 credentials (else boto3's)")
    storage.add_argument("--aws-secret-access-key", metavar="KEY", help="with --aws-access-key-id")
    storage.add_argument(
        "--gcp-credentials", metavar="FILE", help="gcs service-account JSON key file"
    )
    storage.add_argument("--gcp-project", metavar="ID", help="gcs project of a new bucket")
    cache = make.add_argument_group("cache")
    cache.add_argument("--cache", choices=CACHES, help="pypi.db: where metadata is cached")
    cache.add_argument("--db-url", metavar="URL", help="db.url of the sql or redis cache")
    cache.add_argument("--db-region", metavar="REGION", help="db.region_name (dynamo)")
    access = make.add_argument_group("users")
    access.add_argument("--access", choices=ACCESS, help="pypi.auth: where users live")
    access.add_argument(
        "--auth-db-url", metavar="URL", help="auth.db.url (sql; default: the cache's database)"
    )
    access.add_argument(
        "--admin", metavar="NAME", help=f"the admin's name (default {DEFAULT_ADMIN})"
    )
    password = access.add_mutually_exclusive_group()
    password.add_argument(
        "--password", help="the admin's password (visible to other users of this machine)"
    )
    password.add_argument(
        "--password-stdin", action="store_true", help="read the admin's password from stdin"
    )
    access.add_argument(
        "--rounds", type=_rounds, metavar="N", help="hash rounds (default passlib's, 656000)"
    )
    make.add_argument(
        "--listen", metavar="[HOST:]PORT", help="[server:main] address (default 127.0.0.1:6543)"
    )
    make.set_defaults(func=_make_config)


def _rounds(text: str) -> int:
    from pypicloud_tx.domain.passwords import check_rounds

    try:
        return check_rounds(int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            str(e) if text.strip().lstrip("-").isdigit() else f"{text!r} is not a whole number"
        ) from None


# -- checking answers ---------------------------------------------------------------------------
# Each check takes the typed text and returns the value to write into the INI file, or raises
# ValueError saying what is wrong.

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_HOST = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9.-]*|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$")
#: Twisted endpoint types, which look like a host before a port ("tcp:6543").
_ENDPOINT_KINDS = {"tcp", "tcp6", "ssl", "tls", "unix", "systemd", "onion", "stdio"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")


def ini_value(text: str) -> str:
    """``text`` made safe as one INI value: one line, ``%`` doubled (configparser's
    interpolation) except in ``%(here)s``, which stays the config file's folder."""
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    if _CONTROL.search(value):
        raise ValueError("must be one line of text without control characters")
    return "%(here)s".join(part.replace("%", "%%") for part in value.split("%(here)s"))


def unescaped(value: str) -> str:
    """The text :func:`ini_value` made ``value`` from."""
    return value.replace("%%", "%")


def check_bucket(text: str) -> str:
    value = text.strip()
    if not _BUCKET.match(value) or ".." in value:
        raise ValueError(
            f"{value!r} is not a bucket name (3 to 222 lowercase letters, digits, '.', '-' "
            "or '_', starting and ending with a letter or digit)"
        )
    return value


def check_name(text: str) -> str:
    value = text.strip()
    if not _NAME.match(value) or len(value) > 100:
        raise ValueError(f"{value!r} is not a user name (letters, digits, . _ @ + -)")
    return value


def check_http_url(text: str) -> str:
    value = ini_value(text)
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{text.strip()!r} is not an http:// or https:// URL")
    return value


def check_sql_url(text: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    value = ini_value(text)
    try:
        make_url(text.strip().replace("%(here)s", "/here"))
    except (ArgumentError, ValueError):
        raise ValueError("is not a database URL (e.g. sqlite:///%(here)s/db.sqlite)") from None
    return value


def check_redis_url(text: str) -> str:
    value = ini_value(text)
    if not value.startswith(("redis://", "rediss://")):
        raise ValueError("is not a redis:// or rediss:// URL")
    return value


def parse_listen(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT`` -> ``(host, port)`` (host 127.0.0.1 when
    only a port is given).

    :raises ValueError: for anything else (other Twisted endpoints go to ``twist --listen``).
    """
    value = text.strip()
    if value.isdigit():
        host, port = "127.0.0.1", value
    elif value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if not rest.startswith(":"):
            raise ValueError(f"{value!r}: expected [ADDRESS]:PORT")
        port = rest[1:]
    else:
        host, _, port = value.rpartition(":")
        if ":" in host:
            raise ValueError(f"{value!r}: write an IPv6 address in brackets, [::1]:6543")
    hint = "expected [HOST:]PORT; give other Twisted endpoints to twist --listen"
    if not _HOST.match(host) or host.lower() in _ENDPOINT_KINDS or not port.isdigit():
        raise ValueError(f"{value!r}: {hint}")
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"{value!r}: the port must be from 1 to 65535")
    return host, number


# -- asking -------------------------------------------------------------------------------------


@attrs.define
class Prompter:
    """Asks questions on a terminal: prompts on ``output``, answers from ``input``.

    Each question is asked again after a wrong answer, at most :data:`MAX_TRIES` times.
    """

    input: IO[str]
    output: IO[str]
    read_secret: Callable[[str], str] = getpass.getpass

    def _line(self, prompt: str) -> str:
        self.output.write(prompt)
        self.output.flush()
        line = self.input.readline()
        if not line:
            raise Abort("no answer: the input ended")
        return line.strip()

    def ask(
        self, question: str, default: str | None, check: Callable[[str], Any] = ini_value
    ) -> Any:
        """An answer passed through ``check``; empty takes ``default`` (when there is one;
        the empty string means the question may be left unanswered)."""
        shown = f" [{default}]" if default else ""
        for _ in range(MAX_TRIES):
            answer = self._line(f"{question}{shown}: ")
            if not answer:
                if default is None:
                    self.output.write("  an answer is needed\n")
                    continue
                if default == "":
                    return ""
                answer = default
            try:
                return check(answer)
            except ValueError as e:
                self.output.write(f"  {e}\n")
        raise Abort(f"no valid answer to: {question}")

    def choose(self, question: str, choices: Sequence[str], default: str) -> str:
        """One of ``choices``, by number or name."""
        listed = "  ".join(f"[{i}] {c}" for i, c in enumerate(choices, 1))
        for _ in range(MAX_TRIES):
            self.output.write(f"{question}  {listed}\n")
            answer = self._line(f"choice [{default}]: ") or default
            if answer.isdigit() and 1 <= int(answer) <= len(choices):
                return choices[int(answer) - 1]
            if answer in choices:
                return answer
            self.output.write(f"  choose one of 1 to {len(choices)}\n")
        raise Abort(f"no valid answer to: {question}")

    def yes(self, question: str) -> bool:
        """Yes or no, no being the default."""
        for _ in range(MAX_TRIES):
            answer = self._line(f"{question} [y/N]: ").lower()
            if answer in ("", "n", "no"):
                return False
            if answer in ("y", "yes"):
                return True
        raise Abort(f"no valid answer to: {question}")

    def secret(self, question: str) -> str:
        """A value typed without echo (a key), checked by :func:`ini_value`."""
        for _ in range(MAX_TRIES):
            try:
                return ini_value(self.read_secret(f"{question}: "))
            except ValueError as e:
                self.output.write(f"  {e}\n")
        raise Abort(f"no valid answer to: {question}")

    def new_password(self, question: str) -> str:
        """A password typed twice without echo; empty means "generate one"."""
        for _ in range(MAX_TRIES):
            password = self.read_secret(f"{question} (empty: generate one): ")
            if not password:
                return ""
            if password == self.read_secret("Again: "):
                return password
            self.output.write("  the passwords do not match\n")
        raise Abort(f"no valid answer to: {question}")


# -- the answers --------------------------------------------------------------------------------


@attrs.frozen
class Answers:
    """What goes into the template: INI-ready values (``%`` escaped) plus the admin's
    password in clear (never written) and whether it was generated."""

    values: dict[str, Any]
    password: str
    generated: bool


def gather(args: argparse.Namespace, prompter: Prompter | None, stdin: IO[str]) -> Answers:
    """The answer to every question: the flag's value, else the terminal's (``prompter``),
    else the template's default.

    :raises Abort: with status 2 for a bad or missing flag value.
    """

    def flag(name: str, check: Callable[[str], Any]) -> Any:
        text = getattr(args, name)
        if text is None:
            return None
        try:
            return check(text)
        except ValueError as e:
            raise Abort(f"--{name.replace('_', '-')}: {e}", 2) from None

    def answer(
        name: str, question: str, default: str | None, check: Callable[[str], Any] = ini_value
    ) -> Any:
        given = flag(name, check)
        if given is not None:
            return given
        if prompter is not None:
            return prompter.ask(question, default, check)
        if default is None:
            raise Abort(f"--{name.replace('_', '-')} is required here (or answer on a terminal)", 2)
        return check(default) if default else ""

    def pick(name: str, question: str, choices: Sequence[str], default: str) -> str:
        given: str | None = getattr(args, name)
        if given is not None:
            return given
        if prompter is not None:
            ordered = [default, *(c for c in choices if c != default)]
            return prompter.choose(question, ordered, default)
        return default

    if args.password == "":
        raise Abort("--password: the password is empty", 2)
    template = args.template
    if template is None:
        template = "development"
        if prompter is not None:
            template = prompter.choose(
                "What is this config file for?", ["development", "test", "production"], template
            )
    defaults = TEMPLATES[template]
    values: dict[str, Any] = {"template": template}

    storage = pick(
        "storage", "Where do you want to store your packages?", STORAGES, defaults["storage"]
    )
    values["storage"] = storage
    if storage == "file":
        values["storage_dir"] = answer("storage_dir", "Package folder", defaults["storage_dir"])
    elif storage in ("s3", "gcs"):
        kind = storage.upper()
        values["bucket"] = answer("bucket", f"{kind} bucket name", None, check_bucket)
        values["region"] = answer("region", "Bucket region (empty: the default)", "")
        endpoint = (
            "S3-compatible server URL (empty: AWS)"
            if storage == "s3"
            else ("GCS API endpoint (empty: Google's)")
        )
        values["endpoint_url"] = answer("endpoint_url", endpoint, "", check_http_url)
    if storage == "s3":
        key_id = answer("aws_access_key_id", "AWS access key id (empty: boto3's chain)", "")
        values["aws_access_key_id"] = key_id
        if key_id:
            secret = flag("aws_secret_access_key", ini_value)
            if secret is None and prompter is not None:
                secret = prompter.secret("AWS secret access key")
            if secret is None:
                raise Abort("--aws-secret-access-key is required with --aws-access-key-id", 2)
            values["aws_secret_access_key"] = secret
    elif storage == "gcs":
        values["gcp_credentials"] = answer(
            "gcp_credentials", "Service-account JSON key file (empty: default credentials)", ""
        )
        values["gcp_project"] = answer("gcp_project", "Project of a new bucket (empty: none)", "")

    cache = pick("cache", "Where do you want to cache package metadata?", CACHES, defaults["cache"])
    values["cache"] = cache
    if cache == "sql":
        values["db_url"] = answer("db_url", "Database URL", defaults["db_url"], check_sql_url)
    elif cache == "redis":
        values["db_url"] = answer("db_url", "Redis URL", DEFAULT_REDIS_URL, check_redis_url)
    elif cache == "dynamo":
        values["db_region"] = answer("db_region", "DynamoDB region", None)

    access = pick("access", "Where do you want to keep users?", ACCESS, defaults["access"])
    values["access"] = access
    if access == "sql":
        shared = unescaped(values["db_url"]) if cache == "sql" else defaults["db_url"]
        values["auth_db_url"] = answer("auth_db_url", "Users database URL", shared, check_sql_url)
    values["admin"] = answer("admin", "Admin username", DEFAULT_ADMIN, check_name)

    password = args.password
    if args.password_stdin:
        password = stdin.readline().rstrip("\r\n")
        if not password:
            raise Abort("--password-stdin: the password is empty", 2)
    if password is None and prompter is not None:
        password = prompter.new_password("Admin password")
    generated = not password
    if generated:
        password = secrets.token_urlsafe(15)

    host, port = answer("listen", "Listen on [HOST:]PORT", defaults["listen"], parse_listen)
    values["listen_host"], values["listen_port"] = host, port
    values["signing_key"] = secrets.token_urlsafe(32)
    values["validate_key"] = secrets.token_urlsafe(32)
    values["encrypt_key"] = secrets.token_urlsafe(32)
    return Answers(values, password, generated)


def render(values: dict[str, Any], filename: str) -> str:
    """The configuration text of the answers."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pypicloud_tx.scripts", "templates"),
        autoescape=False,  # an INI file, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    defaults = {
        "region": "",
        "endpoint_url": "",
        "aws_access_key_id": "",
        "gcp_credentials": "",
        "gcp_project": "",
    }
    return env.get_template("config.ini.jinja2").render(
        {**defaults, **values, "filename": filename}
    )


# -- writing ------------------------------------------------------------------------------------


def validate(text: str) -> Any:
    """Load ``text`` as the server would (from a private temporary folder, without the
    environment's ``PPC_*`` overrides); the :class:`Settings`.

    :raises Abort: with the loader's message when it does not load.
    """
    from pypicloud_tx.config.loader import load_settings

    with tempfile.TemporaryDirectory(prefix="ppc-make-config-") as folder:
        path = os.path.join(folder, "server.ini")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            return load_settings(path, environ={})
        except ConfigError as e:
            raise Abort(f"the generated configuration does not load: {e.message}") from None


def write_private(path: str, text: str, force: bool) -> None:
    """Write ``text`` to ``path`` with mode 0600, all at once: a temporary file in the same
    folder, then a hard link (which refuses an existing file) or, with ``force``, a rename.

    :raises Abort: when the file exists (without ``force``) or cannot be written.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, temp = tempfile.mkstemp(prefix=".make-config-", suffix=".tmp", dir=folder)
    except OSError as e:
        raise Abort(f"cannot write in {folder}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o600)
        if force:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)
            except FileExistsError:
                raise Abort(f"{path} exists; nothing was written (--force replaces it)") from None
    except OSError as e:
        raise Abort(f"cannot write {path}: {e.strerror}") from None
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def seed_admin(path: str, username: str, password_hash: str, password: str) -> bool:
    """Create ``username`` as an admin in the SQL access database of the config at ``path``
    (an existing user is left alone); whether the admin logs in with ``password``.

    :raises Abort: when the database cannot be reached.
    """
    from pypicloud_tx.config.loader import load_settings
    from pypicloud_tx.errors import PPCError
    from pypicloud_tx.scripts.check import with_runtime

    try:
        settings = load_settings(path, environ={})
    except ConfigError as e:
        raise Abort(f"{path} does not load: {e.message}") from None
    outcome: list[bool] = []
    problems: list[str] = []

    async def work(runtime: Any, reactor: Any) -> int:
        choice = settings.access
        try:
            access = choice.cls.from_config(choice.options, runtime)
        except PPCError as e:
            problems.append(e.message)
            return 1
        try:
            await access.start()
            await access.load(
                {"users": [{"username": username, "password": password_hash, "admin": True}]}
            )
            outcome.append(bool(await access.verify_user(username, password)))
        except PPCError as e:
            problems.append(e.message)
            return 1
        finally:
            stop = getattr(access, "stop", None)
            if stop is not None:
                await stop()
        return 0

    if with_runtime(settings, work) != 0 or not outcome:
        reason = problems[0] if problems else "unknown error"
        raise Abort(
            f"{path} was written, but the admin could not be created in auth.db.url "
            f"({reason}); fix the database and run make-config again with --force, or start "
            f"the server and register {username} (the first user to register becomes an admin)"
        )
    return outcome[0]


# -- the command --------------------------------------------------------------------------------


def _make_config(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except Abort as e:
        print(f"error: {e.message}", file=sys.stderr)
        return e.status


def _run(args: argparse.Namespace) -> int:
    from pypicloud_tx.domain.passwords import hash_password

    to_stdout = args.outfile in (None, "-")
    interactive = not args.no_input and sys.stdin.isatty()
    prompter = Prompter(sys.stdin, sys.stderr) if interactive else None
    if args.password_stdin and interactive:
        raise Abort("--password-stdin reads a pipe; on a terminal the password is asked for", 2)
    if not to_stdout and os.path.exists(args.outfile) and not args.force:
        if prompter is None or not prompter.yes(f"{args.outfile} exists. Overwrite?"):
            raise Abort(f"{args.outfile} exists; nothing was written (--force replaces it)")
        args.force = True
    answers = gather(args, prompter, sys.stdin)
    values = answers.values
    if to_stdout and values["access"] == "sql":
        raise Abort("--access sql needs FILE: the admin is created in the database it names", 2)
    values["password_hash"] = hash_password(answers.password, args.rounds)
    filename = "server.ini" if to_stdout else os.path.basename(args.outfile)
    text = render(values, filename)
    validate(text)
    if to_stdout:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_private(args.outfile, text, args.force)
    admin = values["admin"]
    where = "stdout" if to_stdout else f"{args.outfile} (mode 0600)"
    print(
        f"wrote {where}: {values['template']} template, {values['storage']} storage, "
        f"{values['cache']} cache, {values['access']} users",
        file=sys.stderr,
    )
    usable = True
    if values["access"] == "sql":
        usable = seed_admin(args.outfile, admin, values["password_hash"], answers.password)
        if usable:
            print(f"created the admin {admin} in auth.db.url", file=sys.stderr)
        else:
            print(
                f"a user {admin} already exists in auth.db.url: left as it was (with its "
                "own password); it is an admin through auth.admins",
                file=sys.stderr,
            )
    if answers.generated and usable:
        print(
            f"admin {admin}, password: {answers.password}  (generated: it is shown only this once)",
            file=sys.stderr,
        )
    if not to_stdout:
        print(
            f"next: pypicloud-tx check {args.outfile} && twist pypicloud --config {args.outfile}",
            file=sys.stderr,
        )
    return 0
