"""Reading the small forms of the API: query string, urlencoded body or a JSON object."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from twisted.web.iweb import IRequest

from pypicloud_tx.errors import InvalidUpload

#: Forms here are a few fields; anything bigger is not one of ours.
MAX_FORM = 64 * 1024
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def read_form(request: IRequest) -> dict[str, list[str]]:
    """Every field of the request: query-string arguments, then the body's fields
    (``application/x-www-form-urlencoded`` or a JSON object), each as a list of strings.

    :raises InvalidUpload: for a body that is too big or not the JSON object it claims to be.
    """
    fields: dict[str, list[str]] = {}
    for key, values in (request.args or {}).items():
        name = key.decode("utf-8", "replace")
        fields.setdefault(name, []).extend(v.decode("utf-8", "replace") for v in values)
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type not in (b"application/x-www-form-urlencoded", b"application/json"):
        return fields
    request.content.seek(0)
    body = request.content.read(MAX_FORM + 1)
    if len(body) > MAX_FORM:
        raise InvalidUpload(f"The form is larger than {MAX_FORM} bytes.")
    if content_type == b"application/json":
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise InvalidUpload("The body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise InvalidUpload("The JSON body must be an object of field names to values.")
        for name, value in data.items():
            values = value if isinstance(value, list) else [value]
            fields.setdefault(str(name), []).extend(_text(v) for v in values)
        return fields
    for name, values in parse_qs(body.decode("utf-8", "replace")).items():
        fields.setdefault(name, []).extend(values)
    return fields


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def field(fields: dict[str, list[str]], name: str) -> str | None:
    """The first value of ``name``, or None."""
    values = fields.get(name)
    return values[0] if values else None


def required(fields: dict[str, list[str]], name: str, what: str) -> str:
    """The first value of ``name``.  :raises InvalidUpload: saying to send it."""
    value = field(fields, name)
    if value is None or value == "":
        raise InvalidUpload(f"Send {name}: {what}.")
    return value


def as_bool(value: str | None, name: str, default: bool | None = None) -> bool:
    """A boolean field.  :raises InvalidUpload: for anything but true/false/1/0/yes/no."""
    if value is None:
        if default is None:
            raise InvalidUpload(f"Send {name}=true or {name}=false.")
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise InvalidUpload(f"{name} must be true or false, not {value!r}.")


def listed(fields: dict[str, list[str]], name: str) -> list[str]:
    """A repeatable field whose values may also be comma- or space-separated lists."""
    found: list[str] = []
    for value in fields.get(name, []):
        found.extend(v for v in value.replace(",", " ").split() if v)
    return found
