"""Reading pages: home, the project list, a project's page, file downloads, static files."""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from pypicloud_tx.domain.names import canonical, is_valid_name
from pypicloud_tx.domain.policy import WRITE
from pypicloud_tx.errors import NotFound
from pypicloud_tx.web.context import arg
from pypicloud_tx.web.download import FileBody
from pypicloud_tx.web.ui.listing import current_release, project_page, releases
from pypicloud_tx.web.ui.readme import render_description
from pypicloud_tx.web.ui.render import Pages


def project_name(project: str) -> str:
    """The canonical name.  :raises NotFound: for a name no project can have."""
    if not is_valid_name(project):
        raise NotFound(f"{project!r} is not a valid project name.")
    return canonical(project)


def _int(text: str | None, default: int) -> int:
    try:
        return int(text or default)
    except ValueError:
        return default


def _links(metadata: Any) -> list[tuple[str, str]]:
    """``(label, URL)`` of the project's web links; only http(s) URLs become links."""
    found = []
    home = metadata.get("home_page")
    if isinstance(home, str) and home.strip():
        found.append(("Homepage", home.strip()))
    urls = metadata.get("project_urls") or []
    if isinstance(urls, dict):
        urls = [f"{k}, {v}" for k, v in urls.items()]
    for entry in urls if isinstance(urls, list) else [urls]:
        label, _, url = str(entry).partition(",")
        found.append((label.strip() or url.strip(), url.strip()))
    return [(label, url) for label, url in found if url.lower().startswith(("https://", "http://"))]


def _listed(value: Any) -> list[str]:
    if not value:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def add_browse_routes(app: Klein, pages: Pages) -> None:
    ctx = pages.ctx

    @pages.route(app, "/", "GET", "HEAD")
    async def home(request: IRequest) -> bytes:
        """What this index is, how to use it with pip, uv, poetry and twine, who is logged in."""
        visitor = await pages.visitor(request)
        names = await ctx.index.project_names(visitor.identity)
        return pages.render(
            request,
            visitor,
            "home.html",
            section="home",
            project_count=len(names),
            anonymous_read="everyone" in ctx.settings.default_read,
            can_register=await ctx.accounts.allow_register() or await ctx.accounts.needs_admin(),
        )

    @pages.route(app, "/projects/", "GET", "HEAD")
    async def projects(request: IRequest) -> bytes:
        """Every readable project: search by name and summary, sort, pages of 50."""
        visitor = await pages.visitor(request)
        summaries = await ctx.index.summaries(visitor.identity)
        page = project_page(
            summaries,
            (arg(request, "q") or "").strip(),
            arg(request, "sort") or "name",
            _int(arg(request, "page"), 1),
        )
        return pages.render(
            request, visitor, "projects.html", section="projects", listing=page, query=page.query
        )

    @pages.route(app, "/projects", "GET", "HEAD")
    async def projects_slash(request: IRequest) -> bytes:
        return pages.redirect(request, "/projects/")

    async def show_project(request: IRequest, project: str, version: str | None) -> bytes:
        visitor = await pages.visitor(request)
        name = project_name(project)
        files = await ctx.index.project_files(visitor.identity, name)
        found = releases(files)
        if version is None:
            shown = current_release(found)
        else:
            matching = [r for r in found if r.version == version]
            if not matching:
                raise NotFound(f"{name} has no version {version}.")
            shown = matching[0]
        newest = shown.newest
        metadata = newest.metadata
        description = await ctx.run_blocking(
            render_description,
            str(metadata.get("description") or ""),
            metadata.get("description_content_type"),
        )
        permissions = await ctx.index.permissions(visitor.identity, name)
        return pages.render(
            request,
            visitor,
            "project.html",
            section="projects",
            name=name,
            display_name=newest.display_name or name,
            releases=found,
            release=shown,
            latest=found[0],
            file=newest,
            description=description,
            links=_links(metadata),
            requires_dist=_listed(metadata.get("requires_dist")),
            classifiers=_listed(metadata.get("classifiers")),
            author=metadata.get("author") or metadata.get("author_email") or "",
            license=metadata.get("license_expression") or metadata.get("license") or "",
            can_write=WRITE in permissions,
            allow_delete=ctx.settings.allow_delete,
        )

    @pages.route(app, "/project/<string:project>/", "GET", "HEAD")
    async def project_page_(request: IRequest, project: str) -> bytes:
        """A project: its newest release's description and files, every version."""
        if project != canonical(project) and is_valid_name(project):
            return pages.redirect(request, f"/project/{canonical(project)}/")
        return await show_project(request, project, None)

    @pages.route(app, "/project/<string:project>/<string:version>/", "GET", "HEAD")
    async def release_page(request: IRequest, project: str, version: str) -> bytes:
        """One version of a project."""
        return await show_project(request, project, version)

    @pages.route(app, "/files/<string:project>/<string:filename>", "GET", "HEAD")
    async def download(request: IRequest, project: str, filename: str) -> IResource | bytes:
        """A file, for the visitor of the page that links it (the session decides, as HTTP
        Basic credentials do at ``/api/package/``)."""
        visitor = await pages.visitor(request)
        file = await ctx.index.file(visitor.identity, project, filename)
        url = None if ctx.settings.stream_files else await ctx.index.download_url(file)
        if url is not None:
            request.setResponseCode(302)
            request.setHeader(b"Location", url.encode("utf-8"))
            return b""
        stream = await ctx.index.open(file)
        return FileBody(file, stream, ctx.settings.package_max_age, ctx.run_blocking)

    @app.route("/static/<string:name>", methods=["GET", "HEAD"], endpoint="ui_static")
    def static(request: IRequest, name: str) -> bytes:
        """The style sheet and script of the pages (no CDN: everything is served from here)."""
        found = pages.static_files.get(name)
        if found is None:
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"No such file.\n"
        data, content_type, version = found
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"ETag", f'"{version}"'.encode())
        if arg(request, "v") == version:
            request.setHeader(b"Cache-Control", b"public, max-age=31536000, immutable")
        else:
            request.setHeader(b"Cache-Control", b"public, max-age=300")
        return data
