"""pypicloud's ``/api/`` endpoints, file downloads and ``/packages/``."""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from pypicloud_tx.domain.names import canonical, is_prerelease, is_valid_name
from pypicloud_tx.domain.policy import WRITE
from pypicloud_tx.errors import NotFound
from pypicloud_tx.web import rendering
from pypicloud_tx.web.context import WebContext, arg, json_body, redirect
from pypicloud_tx.web.download import FileBody
from pypicloud_tx.web.forms import field, read_form
from pypicloud_tx.web.upload import receive_upload

METADATA_SUFFIX = ".metadata"


def add_api_routes(app: Klein, ctx: WebContext) -> None:
    """Register ``/api/package/...`` and ``/packages/``."""

    @app.route("/api/package/", methods=["GET", "HEAD"])
    async def packages(request: IRequest) -> bytes:
        caller = await ctx.caller(request)
        if (arg(request, "verbose") or "").lower() in ("true", "1", "yes"):
            summaries = await ctx.index.summaries(caller)
            return json_body(
                request,
                {
                    "packages": [
                        {
                            "name": s.name,
                            "stable": s.stable,
                            "unstable": s.unstable,
                            "last_modified": int(s.last_modified.timestamp()),
                            "summary": s.summary,
                        }
                        for s in summaries
                    ]
                },
            )
        return json_body(request, {"packages": await ctx.index.project_names(caller)})

    @app.route("/api/package/<string:project>/", methods=["GET", "HEAD"])
    async def package_versions(request: IRequest, project: str) -> bytes:
        name = _name(project)
        caller = await ctx.caller(request)
        files = await ctx.index.project_files(caller, name)
        base = ctx.base_url(request)
        return json_body(
            request,
            {
                "packages": [
                    {
                        "name": f.display_name or f.name,
                        "filename": f.filename,
                        "version": f.version,
                        "last_modified": int(f.upload_time.timestamp()),
                        "size": f.size,
                        "sha256": f.sha256,
                        "yanked": f.yanked is not None,
                        "yanked_reason": f.yanked,
                        "prerelease": is_prerelease(f.version),
                        "url": f"{base}api/package/{f.name}/{f.filename}",
                    }
                    for f in reversed(files)
                ],
                "write": WRITE in await ctx.index.permissions(caller, name),
            },
        )

    @app.route("/api/package/<string:project>", methods=["GET", "HEAD"])
    def package_versions_slash(request: IRequest, project: str) -> bytes:
        return redirect(request, f"/api/package/{_name(project)}/")

    @app.route("/api/package/<string:project>/<string:filename>", methods=["GET", "HEAD"])
    async def download(request: IRequest, project: str, filename: str) -> IResource | bytes:
        caller = await ctx.caller(request)
        if filename.endswith(METADATA_SUFFIX):
            data, digest = await ctx.fallback.core_metadata(
                caller, project, filename[: -len(METADATA_SUFFIX)]
            )
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            request.setHeader(b"ETag", f'"{digest}"'.encode())
            request.setHeader(b"Cache-Control", f"max-age={ctx.settings.package_max_age}".encode())
            return data
        # Held here, or (pypi.fallback = cache) fetched from upstream and stored first.
        file = await ctx.fallback.file(caller, project, filename)
        url = None if ctx.settings.stream_files else await ctx.index.download_url(file)
        if url is not None:
            return redirect(request, url, 302)
        stream = await ctx.index.open(file)
        return FileBody(file, stream, ctx.settings.package_max_age, ctx.run_blocking)

    @app.route("/api/package/<string:project>/<string:filename>", methods=["POST"])
    async def upload(request: IRequest, project: str, filename: str) -> bytes:
        return await receive_upload(ctx, request, expect_name=project, expect_filename=filename)

    @app.route("/api/package/<string:project>/<string:filename>", methods=["DELETE"])
    async def delete(request: IRequest, project: str, filename: str) -> bytes:
        await ctx.index.delete(await ctx.caller(request), project, filename)
        return json_body(request, {"message": f"{filename} deleted."})

    @app.route("/api/package/<string:project>/<string:filename>/yank", methods=["POST"])
    async def yank(request: IRequest, project: str, filename: str) -> bytes:
        reason = field(read_form(request), "reason") or ""
        file = await ctx.index.yank(await ctx.caller(request), project, filename, reason)
        return json_body(request, {"message": f"{file.filename} yanked.", "reason": file.yanked})

    @app.route("/api/package/<string:project>/<string:filename>/yank", methods=["DELETE"])
    async def unyank(request: IRequest, project: str, filename: str) -> bytes:
        file = await ctx.index.yank(await ctx.caller(request), project, filename, None)
        return json_body(request, {"message": f"{file.filename} is no longer yanked."})

    @app.route("/packages/", methods=["GET", "HEAD"])
    async def all_files(request: IRequest) -> bytes:
        caller = await ctx.caller(request)
        files: list[Any] = []
        for name in await ctx.index.project_names(caller):
            files.extend(await ctx.index.project_files(caller, name))
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return rendering.packages_html(files)


def _name(project: str) -> str:
    if not is_valid_name(project):
        raise NotFound(f"{project!r} is not a valid project name.")
    return canonical(project)
