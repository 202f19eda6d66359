"""The configuration reference, generated from the code so that it cannot drift.

``ppc-options`` is a Sphinx directive: ``core`` renders the general options (the loader's
``CORE`` table, with each default read from :class:`~pypicloud_tx.config.model.Settings`),
``storage``, ``db`` and ``auth`` render one section per registered backend (the fields of its
``Options`` attrs class, declared with :func:`~pypicloud_tx.config.options.option`, whose
``doc=`` is the meaning column), ``lists`` the ``user.*``/``group.*``/``package.*`` lines and
``server`` pypicloud's ``[server:main]``.

The data part (:func:`reference`, :func:`option_names`) needs only the project and attrs:
``tests/test_docs.py`` checks it against what the loader accepts without building the site.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from pypicloud_tx.config import loader, model, registry
from pypicloud_tx.config.options import as_str

#: The meaning of each general option, for readers of the site.  An option missing here gets
#: the ``#:`` comment of its Settings field in config/model.py; ``tests/test_docs.py`` fails
#: when an option of the loader's ``CORE`` has neither.
CORE_DOCS: Mapping[str, str] = {
    "pypi.default_read": (
        "Groups that may read (list, download) a package without package.* lines; "
        "everyone includes anonymous callers."
    ),
    "pypi.default_write": (
        "Groups that may upload, delete or yank on a package without package.* lines "
        "(empty: admins only)."
    ),
    "pypi.cache_update": (
        "Groups that may make the server fetch from upstream and keep what it fetched "
        "(pypi.fallback = cache, /api/fetch)."
    ),
    "pypi.allow_overwrite": (
        "Let an upload replace an existing file of the same name (off: 409 already exists)."
    ),
    "pypi.allow_delete": "Let callers with write permission delete files.",
    "pypi.realm": 'The realm of WWW-Authenticate: Basic realm="...".',
    "pypi.stream_files": (
        "Send file bytes through the server even when the storage could redirect to its own URL."
    ),
    "pypi.package_max_age": "Cache-Control: max-age (seconds) on file downloads.",
    "pypi.download_url": (
        "The server's public root URL, where an absolute URL is needed (default: from the request)."
    ),
    "pypi.max_upload_size": "The largest file an upload may carry (larger: 413).",
    "db.graceful_reload": (
        "Rebuild the cache in place (it stays readable) instead of in one transaction."
    ),
    "pypi.fallback": "What an unknown project does: none (404), redirect or cache upstream's.",
    "pypi.fallback_url": "Deprecated: upstream's simple index; use pypi.fallback_base_url.",
    "pypi.fallback_base_url": (
        "Upstream's root (its /simple and /pypi are used); default https://pypi.org."
    ),
    "pypi.use_fallback": "Deprecated: true means pypi.fallback = redirect, false none.",
    "pypi.trusted_proxies": (
        "Reverse proxies (addresses, networks, or unix for a Unix socket) whose "
        "X-Forwarded-* headers are believed; none by default."
    ),
    "auth.signing_key": (
        "Key of the HMAC that signs sign-up tokens; without it none are issued or accepted."
    ),
    "session.encrypt_key": "The same as session.validate_key (Beaker had both).",
    "session.validate_key": (
        "Secret that signs browser session cookies (not set: one is generated at start-up, "
        "with a warning)."
    ),
    "session.url": (
        "Database of browser sessions (default: the access or cache database when it is SQL, "
        "else this process's memory)."
    ),
}

#: What each kind of backend is chosen by, its option prefix, and a heading.
KINDS: tuple[tuple[str, str, str], ...] = (
    ("pypi.storage", "storage", "Where package files live"),
    ("pypi.db", "db", "Where package metadata is cached"),
    ("pypi.auth", "auth", "Where users, groups and permissions come from"),
)

#: The page that tells the rest about a backend (an operator's guide, not this reference).
GUIDES: Mapping[tuple[str, str], str] = {
    ("pypi.storage", "file"): "configuration",
    ("pypi.storage", "s3"): "storage",
    ("pypi.storage", "cloudfront"): "storage",
    ("pypi.storage", "gcs"): "storage",
    ("pypi.db", "sql"): "configuration",
    ("pypi.db", "redis"): "caches",
    ("pypi.db", "dynamo"): "caches",
    ("pypi.auth", "config"): "configuration",
    ("pypi.auth", "sql"): "configuration",
    ("pypi.auth", "memory"): "access-backends",
    ("pypi.auth", "ldap"): "access-backends",
    ("pypi.auth", "aws_secrets_manager"): "access-backends",
    ("pypi.auth", "remote"): "access-backends",
}

#: The access lines of the file itself (read by the loader, not by a table).
LIST_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("user.<name>", "", "password hash", "A user and their password hash (gen-password)."),
    ("group.<name>", "", "list", "A group and its members."),
    ("package.<package>.user.<name>", "", "r or rw", "One user's permission on a package."),
    (
        "package.<package>.group.<name>",
        "",
        "r or rw",
        "A group's permission on a package (everyone and authenticated are built in).",
    ),
)

#: pypicloud's ``[server:main]`` (waitress or paste), read for the listening address.
SERVER_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("host", "127.0.0.1", "address", "Interface to listen on (* or 0.0.0.0: every IPv4 one)."),
    ("port", "not set", "port", "Port to listen on (twist's --listen wins over both)."),
    (
        "listen",
        "not set",
        "host:port",
        "waitress's spelling of host and port (the first address is used).",
    ),
)

#: Readable names of the parsers options are declared with (else the parser's own name).
TYPES: Mapping[str, str] = {
    "as_str": "text",
    "as_optional_str": "text",
    "parse_or_none": "text",
    "_optional": "text",
    "_secret": "text",
    "_signing_key": "text",
    "_realm": "one line of text",
    "as_bool": "bool",
    "as_int": "integer",
    "_rounds": "integer",
    "as_positive_int": "integer > 0",
    "_positive": "integer > 0",
    "_non_negative": "integer ≥ 0",
    "_cache_time": "seconds",
    "_port": "port",
    "as_list": "list",
    "_lines": "one per line",
    "_project_names": "list of projects",
    "_two_names": "two names",
    "as_size": "size",
    "as_positive_size": "size",
    "as_part_size": "size",
    "as_chunk_size": "size",
    "_seconds": "seconds",
    "as_seconds": "seconds",
    "_non_negative_seconds": "seconds",
    "_cache_seconds": "seconds",
    "_url": "URL",
    "_upstream_url": "URL",
    "as_endpoint": "URL",
    "as_domain": "URL or domain",
    "_server": "URL",
    "parse_redis_url": "Redis URL",
    "_ldap_url": "LDAP URL",
    "_fallback_mode": "redirect, cache or none",
    "as_prefix": "prefix",
    "as_verify": "bool or path",
    "as_dict": "key = value lines",
    "as_conditional": "auto or bool",
    "as_predefined_acl": "ACL name",
    "as_storage_class": "storage class",
    "_fallback": "config",
    "_path": "URL path",
    "_trusted_proxies": "list of networks",
}

_SIZE_UNITS = (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024))


@attrs.frozen
class Row:
    """One option: its name as written in the file, its default, type and meaning."""

    name: str
    default: str | None  # None: required
    kind: str
    doc: str


@attrs.frozen
class Table:
    """A titled table of options (one backend, or one group of general options)."""

    slug: str
    title: str
    intro: str
    rows: tuple[Row, ...]
    guide: str | None = None
    #: A sentence after the link to the guide.
    after: str = ""


def type_name(parse: Callable[[str], Any]) -> str:
    """A reader's name for the values ``parse`` accepts."""
    name = getattr(parse, "__name__", "text")
    return TYPES.get(name) or name.lstrip("_").removeprefix("as_").replace("_", " ")


def show_default(value: Any, parse: Callable[[str], Any] | None = None) -> str | None:
    """``value`` as it would be written in the file; ``None`` for a required option."""
    if value is attrs.NOTHING:
        return None
    if isinstance(value, attrs.Factory):  # type: ignore[arg-type]
        value = value.factory()
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list | frozenset):
        return " ".join(str(v) for v in value) or "empty"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int) and parse is not None and "size" in type_name(parse):
        for unit, size in _SIZE_UNITS:
            if value and value % size == 0:
                return f"{value // size}{unit}"
    if value == "":
        return "empty"
    return str(value)


#: ````pypi.x``: ``, ````pypi.x`` (deprecated): `` or ````a`` / ``b``: `` before a comment.
_OPTION_PREFIX = re.compile(r"^``[^`]+``(\s*\([^)]*\))?(\s*/\s*``[^`]+``)*\s*:\s*")


def field_comments(cls: type[Any]) -> dict[str, str]:
    """The ``#:`` comments above the fields of ``cls``, without their leading option names.

    ``#: ``pypi.realm``: the realm`` above ``realm: str`` gives ``{"realm": "The realm"}``.
    """
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        field = re.match(r"(\w+)\s*:", text)
        if field and pending:
            doc = _OPTION_PREFIX.sub("", " ".join(pending))
            comments[field.group(1)] = doc[:1].upper() + doc[1:]
        pending = []
    return comments


def core_tables() -> list[Table]:
    """The general options, grouped by namespace, in the loader's order."""
    fields = attrs.fields_dict(model.Settings)
    groups: dict[str, list[Row]] = {
        namespace: [] for namespace in ("pypi", "db", "auth", "session")
    }
    for option, _prefix, what in KINDS:
        names = ", ".join(registry.KINDS[option])
        groups["pypi"].append(
            Row(
                option,
                loader.DEFAULT_BACKENDS[option],
                "backend name or dotted path",
                f"{what}: {names} (below), one of pypicloud's class paths, or module.Class.",
            )
        )
    comments = field_comments(model.Settings)
    for option, (field, parse) in loader.CORE.items():
        default = fields[field].default if field in fields else None
        doc = CORE_DOCS.get(option) or comments.get(field, "")
        groups.setdefault(option.partition(".")[0], []).append(
            Row(option, show_default(default, parse), type_name(parse), doc)
        )
    for option in sorted(loader.ALWAYS_ON):
        groups["pypi"].append(
            Row(option, "true", "bool", "Accepted from pypicloud; no effect, always on.")
        )
    for option in sorted(loader.NOT_YET):
        groups.setdefault(option.partition(".")[0], []).append(
            Row(option, "not set", "—", "Read but not acted on yet (a warning says so).")
        )
    titles = {
        "pypi": ("The index", "configuration"),
        "db": ("The cache, whichever backend", "configuration"),
        "auth": ("Sign-up tokens, whichever access backend", "access-control"),
        "session": ("Browser sessions", "web-ui"),
    }
    tables = []
    for namespace, rows in groups.items():
        title, guide = titles.get(namespace, (namespace, None))
        if rows:
            tables.append(
                Table(f"core-{namespace}", f"{title} (``{namespace}.*``)", "", tuple(rows), guide)
            )
    return tables


def backend_class(kind: str, name: str) -> type[Any]:
    """The class registered as ``kind = name``; a failed import stops the build, named."""
    try:
        return registry.resolve(kind, name)[1]
    except Exception as e:
        raise RuntimeError(
            f"the configuration reference cannot load {kind} = {name}: {e} "
            "(install the docs with the backends' extras: pip install -e '.[docs,gcs,ldap]')"
        ) from None


def backend_tables(kind: str) -> list[Table]:
    """One table per backend registered for ``kind`` (``pypi.storage``, ``pypi.db``, ...)."""
    prefix = next(p for k, p, _what in KINDS if k == kind)
    # pypicloud's class paths by short name; "sql" names a cache and an access backend, and
    # pypicloud's package (storage, cache, access) tells which.
    package = {"pypi.storage": ".storage.", "pypi.db": ".cache.", "pypi.auth": ".access."}[kind]
    aliases: dict[str, list[str]] = {}
    for path, short in registry._PYPICLOUD.items():
        if package in path:
            aliases.setdefault(short, []).append(path)
    tables = []
    seen: dict[type[Any], str] = {}
    for name in registry.KINDS[kind]:
        cls = backend_class(kind, name)
        fields = attrs.fields(cls.Options)
        intro = f"``{cls.__module__}.{cls.__qualname__}``"
        also = sorted(aliases.get(name, ()))
        if also:
            intro += "; pypicloud's " + ", ".join(f"``{p}``" for p in also) + " choose it too"
        # CloudFront's options extend S3's: list only what it adds.
        base = next((b for b in cls.Options.__mro__[1:] if b in seen), None)
        after = ""
        inherited = {f.name for f in attrs.fields(base)} if base is not None else set()
        if base is not None and 2 * len(inherited) > len(fields):
            fields = tuple(f for f in fields if f.name not in inherited)
            after = f"Every option of ``{kind} = {seen[base]}``, and:"
        elif not fields:
            intro += ". No options (in this process's memory: for tests and development)"
        seen.setdefault(cls.Options, name)
        rows = tuple(
            Row(
                f"{prefix}.{field.name.replace('__', '.')}",
                show_default(field.default, field.metadata.get("parse", as_str)),
                # parse_options reads a field declared without option() as text
                type_name(field.metadata.get("parse", as_str)),
                field.metadata.get("doc", ""),
            )
            for field in fields
        )
        tables.append(
            Table(
                f"{prefix}-{name}".replace("_", "-"),
                f"``{kind} = {name}``",
                intro + ".",
                rows,
                GUIDES.get((kind, name)),
                after,
            )
        )
    return tables


def simple_table(slug: str, title: str, intro: str, rows: Any) -> Table:
    """A table of ``(name, default, type, meaning)`` rows written here (not read from code)."""
    return Table(slug, title, intro, tuple(Row(*row) for row in rows))


def reference() -> dict[str, list[Table]]:
    """Every table of the reference, by the ``ppc-options`` argument that renders it."""
    return {
        "core": core_tables(),
        "storage": backend_tables("pypi.storage"),
        "db": backend_tables("pypi.db"),
        "auth": backend_tables("pypi.auth"),
        "lists": [
            simple_table(
                "access-lists",
                "Users, groups and permissions in the file",
                "Read by the config access backend (and by ldap's auth.ldap.fallback = config).",
                LIST_ROWS,
            )
        ],
        "server": [
            simple_table(
                "server-main",
                "``[server:main]``",
                "From a pypicloud server.ini: where to listen.",
                SERVER_ROWS,
            )
        ],
    }


def option_names() -> set[str]:
    """Every option name the reference documents."""
    return {row.name for tables in reference().values() for t in tables for row in t.rows}


# ------------------------------------------------------------------------- rendering

_LITERAL = re.compile(r"``(.+?)``|`(.+?)`")


def _inline(text: str) -> Iterator[Any]:
    """``text`` as docutils nodes, with ``code`` spans as literals."""
    from docutils import nodes

    at = 0
    for match in _LITERAL.finditer(text):
        if match.start() > at:
            yield nodes.Text(text[at : match.start()])
        yield nodes.literal(text=match.group(1) or match.group(2))
        at = match.end()
    if at < len(text):
        yield nodes.Text(text[at:])


def _render_table(table: Table, env: Any) -> Any:
    from docutils import nodes
    from sphinx import addnodes

    section = nodes.section(ids=[f"ref-{table.slug}"])
    title = nodes.title()
    title.extend(_inline(table.title))
    section += title
    intro = nodes.paragraph()
    if table.intro:
        intro.extend(_inline(table.intro + " "))
    if table.guide:
        xref = addnodes.pending_xref(
            "",
            refdomain="std",
            reftype="doc",
            reftarget=f"/{table.guide}",
            refdoc=env.docname,
            refexplicit=False,
            refwarn=True,
        )
        xref += nodes.inline(text=table.guide, classes=["xref", "std", "std-doc"])
        intro += nodes.Text("See ")
        intro += xref
        intro += nodes.Text(".")
    if table.after:
        intro.extend(_inline(" " + table.after))
    if intro.children:
        section += intro
    if not table.rows:
        return section
    grid = nodes.table(classes=["ppc-options"])
    group = nodes.tgroup(cols=4)
    grid += group
    for width in (30, 14, 14, 42):
        group += nodes.colspec(colwidth=width)

    def row(*cells: list[Any]) -> Any:
        line = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            paragraph = nodes.paragraph()
            paragraph.extend(cell)
            entry += paragraph
            line += entry
        return line

    head = nodes.thead()
    head += row(*([nodes.Text(t)] for t in ("option", "default", "type", "meaning")))
    group += head
    body = nodes.tbody()
    for option in table.rows:
        if option.default is None:
            default: list[Any] = [nodes.strong(text="required")]
        elif option.default in ("not set", "empty", ""):
            default = [nodes.emphasis(text=option.default)]
        else:
            default = [nodes.literal(text=option.default)]
        body += row(
            [nodes.literal(text=option.name)],
            default,
            [nodes.Text(option.kind)],
            list(_inline(option.doc)),
        )
    group += body
    section += grid
    return section


def setup(app: Any) -> dict[str, Any]:
    from docutils.parsers.rst import Directive

    class OptionsDirective(Directive):
        """``ppc-options core|storage|db|auth|lists|server``: sections of option tables."""

        required_arguments = 1
        has_content = False

        def run(self) -> list[Any]:
            which = self.arguments[0]
            tables = reference().get(which)
            if tables is None:
                raise self.error(f"ppc-options: unknown part {which!r}")
            env = self.state.document.settings.env
            # Re-read this page whenever the code it is generated from changes.
            for module in list(sys.modules.values()):
                path = getattr(module, "__file__", None)
                if path and getattr(module, "__name__", "").startswith("pypicloud_tx."):
                    env.note_dependency(path)
            return [_render_table(table, env) for table in tables]

    app.add_directive("ppc-options", OptionsDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
