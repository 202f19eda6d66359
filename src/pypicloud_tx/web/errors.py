"""The one table that turns errors into HTTP answers.  No traceback ever reaches a client."""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from pypicloud_tx import errors

log = Logger()

#: The first matching class decides: subclasses before their bases.
STATUS: dict[type[errors.PPCError], int] = {
    errors.UpstreamTimeout: 504,
    errors.UpstreamError: 502,
    errors.InvalidUpload: 400,
    errors.Unauthenticated: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.ReadOnly: 409,
    errors.TooLarge: 413,
    errors.TooManyAttempts: 429,
    errors.BackendUnavailable: 503,
    errors.ConfigError: 500,
}


_ROUTING_MESSAGES = {
    404: "Nothing here; the index is at /simple/ and the API at /api/package/.",
    405: "This URL does not accept that method.",
}


def reason_phrase(message: str) -> bytes:
    """The message as a status line reason: twine and uv show it to the user."""
    text = " ".join(message.split())[:200]
    return text.encode("ascii", "replace")


def wants_json(request: IRequest) -> bool:
    accept = (request.getHeader(b"accept") or b"").decode("latin-1").lower()
    path = request.path.decode("latin-1")
    return "json" in accept or path.startswith(("/api/", "/admin/", "/health"))


def render_error(request: IRequest, status: int, message: str, realm: str = "pypi") -> bytes:
    """Write status and headers for an error; return the body."""
    request.setResponseCode(status, reason_phrase(message))
    if status == 401:
        quoted = realm.replace("\\", "\\\\").replace('"', '\\"')
        request.setHeader(b"WWW-Authenticate", f'Basic realm="{quoted}"'.encode())
    request.setHeader(b"Cache-Control", b"no-store")
    if wants_json(request):
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"message": message}).encode() + b"\n"
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return message.encode("utf-8") + b"\n"


def failure_to_response(request: IRequest, failure: Failure, realm: str) -> bytes:
    """Map any failure to a response; unexpected ones are logged and answered 500."""
    error = failure.value
    for cls, status in STATUS.items():
        if isinstance(error, cls):
            assert isinstance(error, errors.PPCError)
            if isinstance(error, errors.TooManyAttempts):
                request.setHeader(b"Retry-After", str(error.retry_after).encode())
            if isinstance(error, errors.BackendUnavailable):
                log.warn("backend unavailable: {message}", message=error.message)
            return render_error(request, status, error.message, realm)
    if isinstance(error, HTTPException) and error.code is not None and error.code < 500:
        # Klein's routing: no route (404), wrong method (405), and the like.
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            request.setHeader(b"Allow", ", ".join(error.valid_methods).encode())
        message = _ROUTING_MESSAGES.get(error.code, error.name)
        return render_error(request, error.code, message, realm)
    log.failure(
        "unexpected error answering {method} {path}",
        failure,
        method=request.method,
        path=request.path,
    )
    return render_error(
        request, 500, "Internal server error; the server log has the details.", realm
    )
