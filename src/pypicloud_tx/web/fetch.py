"""``POST /api/fetch``: cache packages from the upstream index ahead of their first install.

pypicloud's parameters: ``requirements`` (requirements.txt lines), ``wheel`` (default true)
and ``prerelease`` (default false), as a form or a JSON object.  The answer keeps pypicloud's
``pkgs`` (every file now held for the requirements) and adds ``results``: one entry per
requirement line with its ``status`` (``cached``, ``exists``, ``not_found``, ``refused``,
``forbidden``, ``invalid``, ``error``), its files and a message.
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest

from pypicloud_tx.domain.models import PackageFile
from pypicloud_tx.errors import InvalidUpload
from pypicloud_tx.web.context import WebContext, json_body
from pypicloud_tx.web.forms import field, read_form

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _flag(value: str | None, default: bool, name: str) -> bool:
    if value is None or not value.strip():
        return default
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidUpload(f"{name} must be true or false, not {value!r}.")


def _file(f: PackageFile, base: str) -> dict[str, Any]:
    return {
        "name": f.name,
        "filename": f.filename,
        "version": f.version,
        "sha256": f.sha256,
        "size": f.size,
        "origin": f.origin,
        "url": f"{base}api/package/{f.name}/{f.filename}",
    }


def add_fetch_routes(app: Klein, ctx: WebContext) -> None:
    """Register ``POST /api/fetch``."""

    @app.route("/api/fetch", methods=["POST"])
    @app.route("/api/fetch/", methods=["POST"])
    async def fetch(request: IRequest) -> bytes:
        form = read_form(request)
        requirements = field(form, "requirements")
        if requirements is None:
            raise InvalidUpload("Send the requirements to fetch in the 'requirements' field.")
        results = await ctx.fallback.fetch(
            await ctx.caller(request),
            requirements,
            wheel=_flag(field(form, "wheel"), True, "wheel"),
            prerelease=_flag(field(form, "prerelease"), False, "prerelease"),
        )
        base = ctx.base_url(request)
        return json_body(
            request,
            {
                "pkgs": [_file(f, base) for r in results for f in r.files],
                "results": [
                    {
                        "requirement": r.requirement,
                        "status": r.status,
                        "files": [f.filename for f in r.files],
                        "message": r.message,
                    }
                    for r in results
                ],
            },
        )
