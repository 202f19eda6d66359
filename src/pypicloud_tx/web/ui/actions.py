"""Changing the index from a browser: upload a file, delete one (after confirming), yank and
unyank.  Each needs a logged-in visitor with the write permission (the index checks it) and a
form with its CSRF token."""

from __future__ import annotations

from klein import Klein
from twisted.web.iweb import IRequest

from pypicloud_tx.domain.models import PackageFile, Upload
from pypicloud_tx.domain.policy import WRITE
from pypicloud_tx.errors import Forbidden, InvalidUpload, PPCError
from pypicloud_tx.web.multipart import UploadForm, parse_upload
from pypicloud_tx.web.ui import csrf
from pypicloud_tx.web.ui.browse import project_name
from pypicloud_tx.web.ui.render import Pages, status_of


def add_action_routes(app: Klein, pages: Pages) -> None:
    ctx = pages.ctx

    @pages.route(app, "/upload", "GET", "HEAD")
    async def upload_form(request: IRequest) -> bytes:
        """The upload form (any project the visitor may write to)."""
        visitor = await pages.logged_in(request)
        return pages.render(request, visitor, "upload.html", section="upload", error=None)

    @pages.route(app, "/upload", "POST")
    async def upload(request: IRequest) -> bytes:
        """Store a wheel or sdist sent from the upload form (``content`` and ``csrf``).

        Its metadata is read from the archive itself, as for any upload.
        """
        visitor = await pages.logged_in(request)
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        if not content_type.lower().startswith("multipart/form-data"):
            raise InvalidUpload("Send the file from the upload form.")
        request.content.seek(0)
        form: UploadForm = await ctx.run_blocking(
            parse_upload,
            request.content,
            content_type,
            spool_dir=ctx.spool_dir,
            max_file_size=ctx.settings.max_upload_size,
        )
        try:
            csrf.check(ctx, request, visitor, form.first(csrf.FIELD))
            if form.file is None or not form.file.filename:
                raise InvalidUpload("Choose a wheel (.whl) or source archive (.tar.gz) to upload.")
            upload = Upload(
                filename=form.file.filename,
                stream=form.file.stream,
                size=form.file.size,
                sha256=form.file.sha256,
                md5=form.file.md5,
                blake2b_256=form.file.blake2b_256,
                # Only the file speaks for itself: no form field becomes metadata.
                fields={},
            )
            try:
                stored = await ctx.index.upload(visitor.identity, upload)
            except PPCError as e:
                # Shown on the form, so the visitor can pick another file.
                return pages.render(
                    request,
                    visitor,
                    "upload.html",
                    status_of(e),
                    section="upload",
                    error=e.message,
                )
        finally:
            form.close()
        return pages.redirect(
            request,
            f"/project/{stored.name}/{stored.version}/",
            f"{stored.filename} uploaded.",
        )

    async def writable_file(
        request: IRequest, project: str, filename: str
    ) -> tuple[PackageFile, str]:
        visitor = await pages.logged_in(request)
        name = project_name(project)
        file = await ctx.index.file(visitor.identity, name, filename)
        if WRITE not in await ctx.index.permissions(visitor.identity, name):
            raise Forbidden(f"User {visitor.identity.username} may not change {name}.")
        return file, name

    @pages.route(app, "/file/<string:project>/<string:filename>/delete", "GET", "HEAD")
    async def confirm_delete(request: IRequest, project: str, filename: str) -> bytes:
        """Asks before deleting: deleting cannot be undone."""
        file, name = await writable_file(request, project, filename)
        visitor = await pages.visitor(request)
        return pages.render(
            request, visitor, "delete.html", section="projects", file=file, name=name
        )

    @pages.route(app, "/file/<string:project>/<string:filename>/delete", "POST")
    async def delete(request: IRequest, project: str, filename: str) -> bytes:
        visitor = await pages.logged_in(request)
        pages.form(request, visitor)
        name = project_name(project)
        await ctx.index.delete(visitor.identity, name, filename)
        try:
            await ctx.index.project_files(visitor.identity, name)
        except PPCError:
            return pages.redirect(
                request, "/projects/", f"{filename} deleted; {name} has no files."
            )
        return pages.redirect(request, f"/project/{name}/", f"{filename} deleted.")

    @pages.route(app, "/file/<string:project>/<string:filename>/yank", "POST")
    async def yank(request: IRequest, project: str, filename: str) -> bytes:
        """Yank a file (form field ``reason``, may be empty): pip and uv skip it unless it is
        pinned with ``==``."""
        visitor = await pages.logged_in(request)
        fields = pages.form(request, visitor)
        reason = csrf.one(fields, "reason").strip()[:500]
        file = await ctx.index.yank(visitor.identity, project_name(project), filename, reason)
        return pages.redirect(
            request, f"/project/{file.name}/{file.version}/", f"{file.filename} yanked."
        )

    @pages.route(app, "/file/<string:project>/<string:filename>/unyank", "POST")
    async def unyank(request: IRequest, project: str, filename: str) -> bytes:
        visitor = await pages.logged_in(request)
        pages.form(request, visitor)
        file = await ctx.index.yank(visitor.identity, project_name(project), filename, None)
        return pages.redirect(
            request,
            f"/project/{file.name}/{file.version}/",
            f"{file.filename} is no longer yanked.",
        )
