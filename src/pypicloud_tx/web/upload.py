"""Receiving an upload: parse the spooled body off the reactor, hand it to the index."""

from __future__ import annotations

from twisted.web.iweb import IRequest

from pypicloud_tx.domain.models import Upload
from pypicloud_tx.errors import InvalidUpload
from pypicloud_tx.web.context import WebContext, json_body
from pypicloud_tx.web.multipart import UploadForm, parse_upload


async def receive_upload(
    ctx: WebContext,
    request: IRequest,
    expect_name: str | None = None,
    expect_filename: str | None = None,
) -> bytes:
    """Handle a multipart upload in the form twine, uv and poetry send it."""
    caller = await ctx.caller(request)
    content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
    request.content.seek(0)
    form: UploadForm = await ctx.run_blocking(
        parse_upload,
        request.content,
        content_type,
        spool_dir=ctx.spool_dir,
        max_file_size=ctx.settings.max_upload_size,
    )
    try:
        action = form.first(":action")
        if action not in (None, "file_upload"):
            raise InvalidUpload(f"Unsupported :action {action!r}; only file_upload is accepted.")
        if form.file is None:
            raise InvalidUpload("The upload has no file; send it in the 'content' field.")
        upload = Upload(
            filename=form.file.filename,
            stream=form.file.stream,
            size=form.file.size,
            sha256=form.file.sha256,
            md5=form.file.md5,
            blake2b_256=form.file.blake2b_256,
            fields=form.fields,
        )
        stored = await ctx.index.upload(caller, upload, expect_name, expect_filename)
    finally:
        form.close()
    return json_body(
        request,
        {
            "message": f"{stored.filename} stored.",
            "filename": stored.filename,
            "sha256": stored.sha256,
        },
    )
