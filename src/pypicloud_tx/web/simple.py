"""The Simple Repository API (PEP 503/691), legacy uploads, XML-RPC search, PyPI JSON API."""

from __future__ import annotations

import xmlrpc.client
from typing import Any
from xml.parsers import expat

from klein import Klein
from twisted.web.iweb import IRequest

from pypicloud_tx.domain.names import canonical, is_valid_name, versions_equal
from pypicloud_tx.errors import InvalidUpload, NotFound
from pypicloud_tx.services.fallback import Redirect
from pypicloud_tx.web import rendering
from pypicloud_tx.web.context import WebContext, arg, redirect
from pypicloud_tx.web.upload import receive_upload

MAX_XMLRPC = 1024 * 1024


class _DTDRefused(Exception):
    pass


def _refuse_dtd(*args: object) -> None:
    raise _DTDRefused()


def parse_xmlrpc(body: bytes) -> tuple[tuple[Any, ...], str | None]:
    """``(params, method name)`` of an XML-RPC call, refusing any DTD.

    The refusal happens in the XML parser itself, whatever the body's encoding (a byte search
    for ``<!DOCTYPE`` misses a UTF-16 body), so entities are never declared nor expanded.

    :raises InvalidUpload: for a DTD or a body that is not an XML-RPC call.
    """
    unmarshaller = xmlrpc.client.Unmarshaller()
    unmarshaller.xml(None, None)  # type: ignore[arg-type]  # expat hands over text, not bytes (as xmlrpc.client does)
    parser = expat.ParserCreate(None, None)
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.StartElementHandler = unmarshaller.start
    parser.EndElementHandler = unmarshaller.end
    parser.CharacterDataHandler = unmarshaller.data
    try:
        parser.Parse(body, True)
        params = unmarshaller.close()
    except _DTDRefused:
        raise InvalidUpload("XML-RPC requests may not use DTDs or entities.") from None
    except Exception:
        raise InvalidUpload("The body is not a valid XML-RPC request.") from None
    return tuple(params), unmarshaller.getmethodname()


def add_simple_routes(app: Klein, ctx: WebContext) -> None:
    """Register ``/simple/``, ``/pypi/``, ``/legacy/``, ``/`` (POST) and ``/RPC2``."""

    pages = rendering.PageMemo()

    def negotiated(request: IRequest, key: str, source: object, kind_body: dict[str, Any]) -> bytes:
        choice = rendering.negotiate(
            (request.getHeader(b"accept") or b"").decode("latin-1"), arg(request, "format")
        )
        request.setHeader(b"Vary", b"Accept")
        if choice is None:
            request.setResponseCode(406)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return (
                b"None of the media types in your Accept header can be served; ask for "
                b"application/vnd.pypi.simple.v1+json or text/html.\n"
            )
        kind, content_type = choice
        body, tag = pages.get((kind, key), source, kind_body[kind])
        request.setHeader(b"Content-Type", content_type.encode())
        request.setHeader(b"ETag", tag.encode())
        request.setHeader(b"Cache-Control", b"max-age=0, must-revalidate, private")
        match = request.getHeader(b"if-none-match")
        if match and tag.encode() in [t.strip() for t in match.split(b",")]:
            request.setResponseCode(304)
            return b""
        return body

    async def index_page(request: IRequest) -> bytes:
        names = await ctx.index.project_names(await ctx.caller(request))
        return negotiated(
            request,
            "/",
            names,
            {
                "html": lambda: rendering.root_html(names),
                "json": lambda: rendering.root_json(names),
            },
        )

    async def project_page(request: IRequest, base: str, project: str) -> bytes:
        if not is_valid_name(project):
            raise NotFound(f"{project!r} is not a valid project name.")
        name = canonical(project)
        if name != project:
            return redirect(request, f"/{base}/{name}/")
        page = await ctx.fallback.project_page(await ctx.caller(request), name)
        if isinstance(page, Redirect):
            return redirect(request, page.url, 302)
        return negotiated(
            request,
            name,
            page,
            {
                "html": lambda: rendering.project_html(
                    name, page.files, page.upstream, page.direct
                ),
                "json": lambda: rendering.project_json(
                    name, page.files, page.upstream, page.direct
                ),
            },
        )

    @app.route("/simple/", methods=["GET", "HEAD"])
    @app.route("/pypi/", methods=["GET", "HEAD"])
    async def simple_index(request: IRequest) -> bytes:
        return await index_page(request)

    @app.route("/simple", methods=["GET", "HEAD"])
    @app.route("/pypi", methods=["GET", "HEAD"])
    def simple_index_slash(request: IRequest) -> bytes:
        return redirect(request, request.path.decode("ascii") + "/")

    @app.route("/simple/<string:project>/", methods=["GET", "HEAD"])
    async def simple_project(request: IRequest, project: str) -> bytes:
        return await project_page(request, "simple", project)

    @app.route("/pypi/<string:project>/", methods=["GET", "HEAD"])
    async def pypi_project(request: IRequest, project: str) -> bytes:
        return await project_page(request, "pypi", project)

    @app.route("/simple/<string:project>", methods=["GET", "HEAD"])
    @app.route("/pypi/<string:project>", methods=["GET", "HEAD"])
    def project_without_slash(request: IRequest, project: str) -> bytes:
        base = request.path.decode("ascii").split("/")[1]
        if not is_valid_name(project):
            raise NotFound(f"{project!r} is not a valid project name.")
        return redirect(request, f"/{base}/{canonical(project)}/")

    @app.route("/", methods=["POST"])
    @app.route("/simple/", methods=["POST"])
    @app.route("/simple", methods=["POST"])
    @app.route("/legacy/", methods=["POST"])
    @app.route("/legacy", methods=["POST"])
    @app.route("/pypi/", methods=["POST"])
    async def legacy_upload(request: IRequest) -> bytes:
        return await receive_upload(ctx, request)

    @app.route("/pypi", methods=["POST"])
    @app.route("/RPC2", methods=["POST"])
    async def pypi_post(request: IRequest) -> bytes:
        content_type = (request.getHeader(b"content-type") or b"").lower()
        if content_type.startswith(b"multipart/"):
            return await receive_upload(ctx, request)
        return await xmlrpc_search(request)

    async def xmlrpc_search(request: IRequest) -> bytes:
        caller = await ctx.caller(request)
        request.content.seek(0)
        body = request.content.read(MAX_XMLRPC + 1)
        if len(body) > MAX_XMLRPC:
            raise InvalidUpload("The XML-RPC request is too large.")
        params, method = await ctx.run_blocking(parse_xmlrpc, body)
        request.setHeader(b"Content-Type", b"text/xml")
        if method != "search":
            fault = xmlrpc.client.Fault(1, f"Method {method!r} is not supported; only 'search'.")
            return xmlrpc.client.dumps(fault, methodresponse=True).encode()
        criteria_arg = params[0] if params else {}
        operator = params[1] if len(params) > 1 else "and"
        if not isinstance(criteria_arg, dict) or not isinstance(operator, str):
            raise InvalidUpload("search takes a struct of field -> terms and 'and' or 'or'.")
        criteria = {
            k: [v] if isinstance(v, str) else [str(x) for x in v]
            for k, v in criteria_arg.items()
            if k in ("name", "summary")
        }
        found = await ctx.index.search(caller, criteria, operator.lower())
        results = [
            {
                "name": f.display_name or f.name,
                "version": f.version,
                "summary": f.summary or "",
                "_pypi_ordering": 0,
            }
            for f in found
        ]
        return xmlrpc.client.dumps((results,), methodresponse=True, allow_none=True).encode()

    @app.route("/pypi/<string:project>/json", methods=["GET", "HEAD"])
    async def pypi_json(request: IRequest, project: str) -> bytes:
        return await json_api(request, project, None)

    @app.route("/pypi/<string:project>/<string:version>/json", methods=["GET", "HEAD"])
    async def pypi_version_json(request: IRequest, project: str, version: str) -> bytes:
        return await json_api(request, project, version)

    async def json_api(request: IRequest, project: str, version: str | None) -> bytes:
        if not is_valid_name(project):
            raise NotFound(f"{project!r} is not a valid project name.")
        name = canonical(project)
        found = await ctx.fallback.json_files(await ctx.caller(request), name, version)
        if isinstance(found, Redirect):
            return redirect(request, found.url, 302)
        files = found
        if version is not None:
            files = [f for f in files if f.version == version] or [
                f for f in files if versions_equal(f.version, version)
            ]
            if not files:
                raise NotFound(f"Project {name} has no version {version}.")
            version = files[0].version  # as stored: 3.0.0a1 asks for 3.0a1
        request.setHeader(b"Content-Type", b"application/json")
        return rendering.pypi_json(name, files, version, ctx.base_url(request))
