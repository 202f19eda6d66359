"""The INI loader: sections, ``%(here)s``, ``PPC_*`` overrides, every option typed, errors."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping

from passlib.hash import sha256_crypt
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.backends.access.config import ConfigAccessBackend
from pypicloud_tx.backends.cache.memory import MemoryCache
from pypicloud_tx.backends.cache.sql import SQLCache
from pypicloud_tx.backends.storage.files import FileStorage
from pypicloud_tx.backends.storage.memory import MemoryStorage
from pypicloud_tx.config.loader import environment_overrides, load_settings, parse_settings
from pypicloud_tx.config.model import ONE_GB, Settings
from pypicloud_tx.errors import ConfigError
from tests.config.backends import DottedOptionsAccess, RecordingStorage

#: A cheap but real hash, so that parsing a config with users stays fast.
HASH = sha256_crypt.using(rounds=1000).hash("secret")

#: The shape of the server.ini pypicloud's ``ppc-make-config`` writes, with the sections a
#: deployment adds (uwsgi, logging).  Only [app:main] and [server:main] are ours to read.
PYPICLOUD_SERVER_INI = f"""\
[app:main]
use = egg:pypicloud

pyramid.reload_templates = False
pyramid.debug_authorization = false
pyramid.debug_notfound = false
pyramid.debug_routematch = false
pyramid.default_locale_name = en

pypi.default_read =
    authenticated
pypi.default_write =
    authenticated

pypi.storage = file
storage.dir = %(here)s/packages

db.url = sqlite:///%(here)s/db.sqlite

auth.admins =
  admin

user.admin = {HASH}

# For beaker
session.encrypt_key = mXq0LzV8K9bW1+g2ZbQwYg2Vn6yYy4Rk3o3o9i1r5dA=
session.validate_key = T2hJnIwSbs1Ri3dr9dCmTQ==
session.secure = False
session.invalidate_corrupt = true

###
# wsgi server configuration
###

[uwsgi]
paste = config:%p/%n.ini
paste-logger = %p/%n.ini
master = true
processes = 20
http = 0.0.0.0:6543

[server:main]
use = egg:waitress#main
host = 0.0.0.0
port = 6543

[loggers]
keys = root, botocore

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = INFO
handlers = console

[logger_botocore]
level = WARN
qualname = botocore
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)s %(asctime)s [%(name)s] %(message)s
"""

#: The smallest [pypicloud] section that needs no disk: memory storage and cache.
MEMORY = {"pypi.storage": "memory", "pypi.db": "memory"}


def settings_of(options: Mapping[str, str]) -> Settings:
    """Settings from memory backends plus ``options``."""
    return parse_settings({**MEMORY, **options})


class FileTestsMixin(SynchronousTestCase):
    def write(self, text: str, name: str = "server.ini") -> str:
        folder = self.mktemp()
        os.makedirs(folder)
        path = os.path.join(folder, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text))
        return path

    def config_error(self, text: str, environ: Mapping[str, str] | None = None) -> str:
        """The message of the ConfigError loading ``text`` raises; it must be one line."""
        path = self.write(text)
        error = self.assertRaises(ConfigError, load_settings, path, environ or {})
        self.assertNotIn("\n", error.message)
        return error.message


class PypicloudServerIniTests(FileTestsMixin):
    """An existing pypicloud server.ini is read as it is."""

    def test_app_main(self) -> None:
        """[app:main] supplies the options, %(here)s is the file's folder, pyramid.* and
        session.* are accepted silently, and [server:main] host/port becomes the endpoint."""
        path = self.write(PYPICLOUD_SERVER_INI)
        here = os.path.dirname(os.path.abspath(path))
        with capturedLogs() as events:
            settings = load_settings(path, environ={})
        self.assertEqual([formatEvent(e) for e in events], [])
        self.assertEqual(settings.here, here)
        self.assertIs(settings.storage.cls, FileStorage)
        self.assertEqual(settings.storage.name, "file")
        self.assertEqual(settings.storage.options.dir, f"{here}/packages")
        self.assertIs(settings.cache.cls, SQLCache)
        self.assertEqual(settings.cache.options.url, f"sqlite:///{here}/db.sqlite")
        self.assertIs(settings.access.cls, ConfigAccessBackend)
        self.assertEqual(settings.access.options.admins, ("admin",))
        self.assertEqual(settings.access_lists.users, {"admin": HASH})
        self.assertEqual(settings.default_read, ("authenticated",))
        self.assertEqual(settings.default_write, ("authenticated",))
        self.assertEqual(settings.listen, "tcp:port=6543:interface=0.0.0.0")

    def test_pypicloud_section_wins(self) -> None:
        """With both [pypicloud] and [app:main], [pypicloud] is read."""
        path = self.write("""\
            [pypicloud]
            pypi.storage = memory
            pypi.db = memory
            pypi.realm = ours
            [app:main]
            use = egg:pypicloud
            pypi.realm = theirs
            """)
        self.assertEqual(load_settings(path, {}).realm, "ours")

    def test_named_app_section(self) -> None:
        """Without [pypicloud] or [app:main], an [app:*] section that uses pypicloud is read."""
        path = self.write("""\
            [app:other]
            use = egg:something_else
            pypi.realm = wrong
            [app:pypicloud]
            use = egg:pypicloud
            pypi.storage = memory
            pypi.db = memory
            pypi.realm = right
            """)
        self.assertEqual(load_settings(path, {}).realm, "right")

    def test_no_section(self) -> None:
        """A file without any section we read is refused, saying what was looked for."""
        message = self.config_error("[server:main]\nport = 1\n")
        self.assertIn("[pypicloud]", message)

    def test_missing_file(self) -> None:
        """A file that cannot be read is a ConfigError naming it, not an OSError."""
        missing = os.path.abspath(self.mktemp())
        error = self.assertRaises(ConfigError, load_settings, missing, {})
        self.assertIn(missing, error.message)

    def test_not_ini(self) -> None:
        """A file that is not INI gives one line."""
        message = self.config_error("pypi.storage = file\n[pypicloud\n")
        self.assertIn("not a valid INI file", message)

    def test_bad_interpolation_names_option(self) -> None:
        """A lone % or an unknown %(name)s names the option and says how to write a %."""
        message = self.config_error(
            "[pypicloud]\npypi.storage = memory\npypi.db = memory\npypi.realm = 100% ours\n"
        )
        self.assertTrue(message.startswith("pypi.realm: "), message)
        self.assertIn("%%", message)
        message = self.config_error("[pypicloud]\nstorage.dir = %(nowhere)s/x\n")
        self.assertTrue(message.startswith("storage.dir: "), message)

    def test_here_with_percent(self) -> None:
        """A folder whose name holds % still works as %(here)s."""
        folder = os.path.join(self.mktemp(), "100%")
        os.makedirs(folder)
        path = os.path.join(folder, "server.ini")
        with open(path, "w") as f:
            f.write("[pypicloud]\nstorage.dir = %(here)s/packages\npypi.db = memory\n")
        settings = load_settings(path, {})
        self.assertEqual(settings.storage.options.dir, f"{os.path.abspath(folder)}/packages")


class ListenTests(FileTestsMixin):
    """[server:main] of a pypicloud server.ini becomes a Twisted endpoint string."""

    def listen_of(self, server: str) -> str | None:
        path = self.write("[pypicloud]\npypi.storage = memory\npypi.db = memory\n" + server)
        return load_settings(path, {}).listen

    def assertListens(self, server: str, expected: str) -> None:
        listen = self.listen_of(server)
        self.assertEqual(listen, expected)
        assert listen is not None
        serverFromString(MemoryReactor(), listen)  # a description Twisted accepts

    def test_host_and_port(self) -> None:
        """host and port, as waitress and paste take them."""
        self.assertListens(
            "[server:main]\nhost = 10.0.0.5\nport = 8080\n", "tcp:port=8080:interface=10.0.0.5"
        )

    def test_port_only(self) -> None:
        """No host: loopback only, the safe choice."""
        self.assertListens("[server:main]\nport = 8080\n", "tcp:port=8080:interface=127.0.0.1")

    def test_waitress_listen(self) -> None:
        """waitress' listen = host:port, and * for every interface."""
        self.assertListens(
            "[server:main]\nlisten = *:7000 [::1]:7001\n", "tcp:port=7000:interface=0.0.0.0"
        )

    def test_ipv6(self) -> None:
        """An IPv6 host is escaped for the endpoint syntax."""
        self.assertListens(
            "[server:main]\nhost = ::\nport = 6543\n", "tcp6:port=6543:interface=\\:\\:"
        )

    def test_none(self) -> None:
        """Without [server:main] (or without a port) nothing is chosen here."""
        self.assertIsNone(self.listen_of(""))
        self.assertIsNone(self.listen_of("[server:main]\nuse = egg:waitress#main\n"))

    def test_bad_port(self) -> None:
        """A port that is not a number is a one-line ConfigError."""
        message = self.config_error(
            "[pypicloud]\npypi.storage = memory\npypi.db = memory\n[server:main]\nport = http\n"
        )
        self.assertIn("port", message)
        self.assertIn("'http'", message)


class EnvironmentTests(FileTestsMixin):
    """PPC_<NAMESPACE>_<OPTION> environment variables override the file."""

    CONFIG = """\
        [pypicloud]
        storage.dir = %(here)s/packages
        db.url = sqlite:///%(here)s/db.sqlite
        pypi.default_read = everyone
        """

    def test_overrides(self) -> None:
        """PPC_STORAGE_DIR, PPC_PYPI_DEFAULT_READ and PPC_DB_URL replace the file's values;
        %(here)s in them is the file's folder."""
        path = self.write(self.CONFIG)
        here = os.path.dirname(os.path.abspath(path))
        settings = load_settings(
            path,
            {
                "PPC_STORAGE_DIR": "/srv/packages",
                "PPC_PYPI_DEFAULT_READ": "authenticated ops",
                "PPC_DB_URL": "sqlite:///%(here)s/other.sqlite",
            },
        )
        self.assertEqual(settings.storage.options.dir, "/srv/packages")
        self.assertEqual(settings.default_read, ("authenticated", "ops"))
        self.assertEqual(settings.cache.options.url, f"sqlite:///{here}/other.sqlite")

    def test_unrelated_variables_ignored(self) -> None:
        """Variables outside our prefix and namespaces change nothing."""
        self.assertEqual(
            environment_overrides(
                {
                    "PATH": "/bin",
                    "PPC_": "x",
                    "PPC_USER_ADMIN": "x",
                    "PPC_NOTHING": "x",
                    "PPC_PYPI_REALM": "r",
                    "PPC_SESSION_SECURE": "true",
                }
            ),
            {"pypi.realm": "r", "session.secure": "true"},
        )

    def test_environment_errors_name_the_option(self) -> None:
        """A bad value from the environment is reported under the option's name."""
        message = self.config_error(self.CONFIG, {"PPC_PYPI_ALLOW_OVERWRITE": "maybe"})
        self.assertTrue(message.startswith("pypi.allow_overwrite: "), message)

    def test_dotted_option_names(self) -> None:
        """PPC_AUTH_LDAP_URL sets auth.ldap.url, replacing the file's value, though the
        variable cannot say where the dots were."""
        path = self.write("""\
            [pypicloud]
            pypi.storage = memory
            pypi.db = memory
            pypi.auth = tests.config.backends.DottedOptionsAccess
            auth.ldap.url = ldap://file
            """)
        settings = load_settings(
            path, {"PPC_AUTH_LDAP_URL": "ldap://env", "PPC_AUTH_LDAP_BASE_DN": "dc=example"}
        )
        self.assertIs(settings.access.cls, DottedOptionsAccess)
        self.assertEqual(settings.access.options.ldap__url, "ldap://env")
        self.assertEqual(settings.access.options.ldap__base_dn, "dc=example")


class CoreOptionTests(SynchronousTestCase):
    """Every pypi.* option we act on, typed."""

    def test_defaults(self) -> None:
        """Without options: the manual's defaults, and a 1 GB upload limit."""
        settings = settings_of({})
        self.assertEqual(settings.default_read, ("authenticated",))
        self.assertEqual(settings.default_write, ())
        self.assertEqual(settings.cache_update, ("authenticated",))
        self.assertFalse(settings.allow_overwrite)
        self.assertEqual(settings.realm, "pypi")
        self.assertFalse(settings.stream_files)
        self.assertEqual(settings.package_max_age, 0)
        self.assertIsNone(settings.download_url)
        self.assertEqual(settings.max_upload_size, ONE_GB)
        self.assertFalse(settings.graceful_reload)
        self.assertIsNone(settings.listen)

    def test_values(self) -> None:
        """Each option is parsed to its type."""
        settings = settings_of(
            {
                "pypi.default_read": "everyone\n  ops",
                "pypi.default_write": "ops, release",
                "pypi.cache_update": "ops",
                "pypi.allow_overwrite": "true",
                "pypi.realm": "Our index",
                "pypi.stream_files": "yes",
                "pypi.package_max_age": "3600",
                "pypi.download_url": "https://pypi.example.com/",
                "pypi.max_upload_size": "500MB",
                "db.graceful_reload": "on",
            }
        )
        self.assertEqual(settings.default_read, ("everyone", "ops"))
        self.assertEqual(settings.default_write, ("ops", "release"))
        self.assertEqual(settings.cache_update, ("ops",))
        self.assertIs(settings.allow_overwrite, True)
        self.assertEqual(settings.realm, "Our index")
        self.assertIs(settings.stream_files, True)
        self.assertEqual(settings.package_max_age, 3600)
        self.assertEqual(settings.download_url, "https://pypi.example.com")
        self.assertEqual(settings.max_upload_size, 500 * 1024**2)
        self.assertIs(settings.graceful_reload, True)

    def test_empty_default_write(self) -> None:
        """``pypi.default_write =`` (empty) means no group: only admins write."""
        self.assertEqual(settings_of({"pypi.default_write": ""}).default_write, ())

    def test_max_upload_size(self) -> None:
        """Bytes, or KB/MB/GB (powers of 1024, any case, optional space and i)."""
        for text, expected in [
            ("1048576", 1048576),
            ("10KB", 10 * 1024),
            ("10 kb", 10 * 1024),
            ("5MB", 5 * 1024**2),
            ("5M", 5 * 1024**2),
            ("1GB", ONE_GB),
            ("2gib", 2 * ONE_GB),
        ]:
            self.assertEqual(
                settings_of({"pypi.max_upload_size": text}).max_upload_size, expected, text
            )

    def test_bad_values(self) -> None:
        """A bad value is one ConfigError line starting with the option's name."""
        for option, text in [
            ("pypi.allow_overwrite", "maybe"),
            ("pypi.stream_files", "2"),
            ("pypi.package_max_age", "an hour"),
            ("pypi.package_max_age", "-1"),
            ("pypi.download_url", "ftp://example.com"),
            ("pypi.max_upload_size", "1.5GB"),
            ("pypi.max_upload_size", "0"),
            ("pypi.max_upload_size", "lots"),
            ("pypi.realm", "two\nlines"),
            ("pypi.realm", ""),
            ("db.graceful_reload", "sometimes"),
        ]:
            error = self.assertRaises(ConfigError, settings_of, {option: text})
            self.assertTrue(error.message.startswith(f"{option}: "), error.message)
            self.assertNotIn("\n", error.message)

    def test_unknown_options(self) -> None:
        """An unknown option in pypi.*, storage.*, db.* or auth.* stops start-up, named."""
        for option in ["pypi.allow_overwrites", "storage.bucket", "db.host", "auth.ldap.url"]:
            error = self.assertRaises(ConfigError, settings_of, {option: "x"})
            self.assertTrue(error.message.startswith(f"{option}: unknown option"), error.message)
            self.assertNotIn("\n", error.message)

    def test_other_namespaces_accepted(self) -> None:
        """session.*, pyramid.*, use and anything else outside our namespaces pass silently."""
        with capturedLogs() as events:
            settings_of(
                {
                    "session.encrypt_key": "k",
                    "session.secure": "true",
                    "pyramid.reload_templates": "false",
                    "use": "egg:pypicloud",
                    "retry.attempts": "3",
                }
            )
        self.assertEqual(events, [])


class BackendChoiceTests(SynchronousTestCase):
    """pypi.storage, pypi.db and pypi.auth by short name, pypicloud path or dotted path."""

    def test_defaults(self) -> None:
        """Nothing chosen: file storage, SQL cache, config access (the manual's defaults),
        which need storage.dir and db.url."""
        settings = parse_settings({"storage.dir": "/x", "db.url": "sqlite://"})
        self.assertEqual(
            (settings.storage.name, settings.cache.name, settings.access.name),
            ("file", "sql", "config"),
        )

    def test_short_names(self) -> None:
        """Short names pick our classes."""
        settings = parse_settings(
            {"pypi.storage": "memory", "pypi.db": "memory", "pypi.auth": "config"}
        )
        self.assertIs(settings.storage.cls, MemoryStorage)
        self.assertIs(settings.cache.cls, MemoryCache)
        self.assertIs(settings.access.cls, ConfigAccessBackend)

    def test_pypicloud_paths(self) -> None:
        """pypicloud's dotted class paths choose our equivalents."""
        settings = parse_settings(
            {
                "pypi.storage": "pypicloud.storage.FileStorage",
                "storage.dir": "/srv/p",
                "pypi.db": "pypicloud.cache.SQLCache",
                "db.url": "sqlite://",
                "pypi.auth": "pypicloud.access.ConfigAccessBackend",
            }
        )
        self.assertEqual(
            settings.storage,
            settings.storage.__class__("file", FileStorage, FileStorage.Options(dir="/srv/p")),
        )
        self.assertEqual((settings.cache.name, settings.cache.cls), ("sql", SQLCache))
        self.assertEqual(
            (settings.access.name, settings.access.cls), ("config", ConfigAccessBackend)
        )

    def test_arbitrary_dotted_path(self) -> None:
        """Any importable class with Options and from_config; its options are parsed."""
        for path in [
            "tests.config.backends.RecordingStorage",
            "tests.config.backends:RecordingStorage",
        ]:
            settings = settings_of(
                {"pypi.storage": path, "storage.root": "/r", "storage.public": "true"}
            )
            self.assertIs(settings.storage.cls, RecordingStorage)
            self.assertEqual(settings.storage.options, RecordingStorage.Options("/r", True))

    def test_missing_required(self) -> None:
        """A required option of the chosen backend: storage.dir for file, db.url for sql, and
        one of a dotted-path backend."""
        for options, option in [
            ({"pypi.storage": "file", "pypi.db": "memory"}, "storage.dir"),
            ({"pypi.storage": "memory", "pypi.db": "sql"}, "db.url"),
            (
                {"pypi.storage": "tests.config.backends.RecordingStorage", "pypi.db": "memory"},
                "storage.root",
            ),
        ]:
            error = self.assertRaises(ConfigError, parse_settings, options)
            self.assertEqual(error.message, f"{option}: required option is missing")

    def test_pypicloud_path_of_another_kind(self) -> None:
        """pypicloud's class paths select only backends of their own kind: an access class
        given as the cache is refused, not mistaken for the SQL cache."""
        error = self.assertRaises(
            ConfigError, settings_of, {"pypi.db": "pypicloud.access.SQLAccessBackend"}
        )
        self.assertIn("is not a pypicloud class for pypi.db", error.message)

    def test_bad_choices(self) -> None:
        """Unknown short names and paths that cannot be loaded give one clear line."""
        for value, expected in [
            ("floppy", "unknown backend 'floppy' (choose one of cloudfront, file, gcs, memory"),
            ("no_such_module.Storage", "no module named 'no_such_module'"),
            ("tests.config.backends.Missing", "tests.config.backends has no 'Missing'"),
            ("tests.config.backends.NotABackend", "is not a backend class (it has no Options)"),
            ("tests.config.backends.not_a_class", "is not a class"),
            (
                "tests.config.broken_backend.Storage",
                "importing tests.config.broken_backend failed with RuntimeError: "
                "this backend module is broken",
            ),
            (".Storage", "is not a dotted path"),
        ]:
            error = self.assertRaises(ConfigError, settings_of, {"pypi.storage": value})
            self.assertTrue(error.message.startswith("pypi.storage: "), error.message)
            self.assertIn(expected, error.message)
            self.assertNotIn("\n", error.message)


class AccessListTests(SynchronousTestCase):
    """user.*, group.*, package.*.user.* and package.*.group.*."""

    def test_lists(self) -> None:
        """Users keep their hash, groups their members, packages canonical names and
        principals (everyone and authenticated stay themselves)."""
        settings = settings_of(
            {
                "user.alice": HASH,
                "user.first.last": HASH,
                "group.devs": "alice\n  first.last",
                "package.Django_Unchained.user.alice": "rw",
                "package.zope.interface.group.devs": "R",
                "package.zope.interface.group.everyone": "r",
                "package.polite.requests.group.authenticated": "rw",
                "package.tool.user.first.last": "r",
            }
        )
        lists = settings.access_lists
        self.assertEqual(lists.users, {"alice": HASH, "first.last": HASH})
        self.assertEqual(lists.groups, {"devs": ("alice", "first.last")})
        read, rw = frozenset({"read"}), frozenset({"read", "write"})
        self.assertEqual(
            lists.packages,
            {
                "django-unchained": {"user:alice": rw},
                "zope-interface": {"group:devs": read, "everyone": read},
                "polite-requests": {"authenticated": rw},
                "tool": {"user:first.last": read},
            },
        )

    def test_rightmost_separator(self) -> None:
        """A package whose name holds ``.user.`` is split at the last .user./.group."""
        settings = settings_of({"package.some.user.tool.group.dev": "r"})
        self.assertEqual(
            dict(settings.access_lists.packages),
            {"some-user-tool": {"group:dev": frozenset({"read"})}},
        )

    def test_bad_lines(self) -> None:
        """Malformed package lines and bad permissions are one-line errors naming the line."""
        for option, value, expected in [
            ("package.foo.user.bob", "w", "'w' is not a permission (use r or rw)"),
            ("package.foo.everyone", "r", "expected package.<package>.user.<name>"),
            ("package.foo.user.", "r", "expected package.<package>.user.<name>"),
            ("package.-bad-.user.bob", "r", "expected package.<package>.user.<name>"),
            ("user.", HASH, "the name after the dot must be one word"),
        ]:
            error = self.assertRaises(ConfigError, settings_of, {option: value})
            self.assertIn(expected, error.message)
            self.assertNotIn("\n", error.message)
            self.assertTrue(error.message.startswith(f"{option}: "))

    def test_bad_hash_refused_with_config_access(self) -> None:
        """With the config access backend, a user line whose hash can never match stops
        start-up (a truncated hash is caught too)."""
        for value in ["secret", HASH[:-5]]:
            error = self.assertRaises(ConfigError, settings_of, {"user.bob": value})
            self.assertTrue(error.message.startswith("user.bob: "), error.message)
            self.assertNotIn("\n", error.message)

    def test_bad_hash_ignored_with_other_access(self) -> None:
        """Another access backend does not read user.* lines, so they are not checked."""
        settings = settings_of(
            {"pypi.auth": "tests.config.backends.DottedOptionsAccess", "user.bob": "secret"}
        )
        self.assertEqual(settings.access_lists.users, {"bob": "secret"})

    def test_undefined_group_warns(self) -> None:
        """A package line naming a group without a group.* line logs a warning."""
        with capturedLogs() as events:
            settings_of({"package.foo.group.typo": "r", "package.foo.group.everyone": "r"})
        messages = [formatEvent(e) for e in events]
        self.assertEqual(len(messages), 1)
        self.assertIn("group.typo", messages[0])

    def test_config_access_options(self) -> None:
        """auth.admins is a list; auth.rounds an int within sha512_crypt's range."""
        options = settings_of({"auth.admins": "alice\n bob", "auth.rounds": "80000"}).access.options
        self.assertEqual(
            options, ConfigAccessBackend.Options(admins=("alice", "bob"), rounds=80000)
        )
        for rounds in ["10", "many"]:
            error = self.assertRaises(ConfigError, settings_of, {"auth.rounds": rounds})
            self.assertTrue(error.message.startswith("auth.rounds: "), error.message)
