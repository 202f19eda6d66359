"""A project's long description as sanitised HTML, by PyPI's own renderer.

``readme-renderer`` (what PyPI and ``twine check`` use) renders Markdown (GitHub-flavoured or
CommonMark), reStructuredText and plain text, and cleans the result with ``nh3``: no script,
no event handler, no ``javascript:`` link survives.  Rendering reStructuredText can take a
while, so it runs on a thread and each distinct description is rendered once.
"""

from __future__ import annotations

import functools
import warnings
from email.message import Message

import readme_renderer.markdown
import readme_renderer.rst
import readme_renderer.txt

#: Longer descriptions are shown as plain text: rendering them could take seconds.
MAX_RENDERED = 512 * 1024


def _content_type(value: str | None) -> tuple[str, dict[str, str]]:
    message = Message()
    message["Content-Type"] = value or "text/x-rst"
    params = {k.lower(): str(v) for k, v in (message.get_params() or [])[1:]}
    return message.get_content_type(), params


@functools.lru_cache(maxsize=256)
def render_description(text: str, content_type: str | None) -> str:
    """Sanitised HTML for ``text`` (empty for an empty description).

    The ``Description-Content-Type`` picks the renderer as PyPI does (``text/x-rst`` when
    absent); reStructuredText that does not render is shown as plain text.
    """
    if not text.strip():
        return ""
    if len(text) > MAX_RENDERED:
        return readme_renderer.txt.render(text[:MAX_RENDERED]) or ""
    kind, params = _content_type(content_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rendered: str | None
        if kind == "text/markdown":
            rendered = readme_renderer.markdown.render(text, variant=params.get("variant", "GFM"))
        elif kind == "text/plain":
            rendered = readme_renderer.txt.render(text)
        else:
            rendered = readme_renderer.rst.render(text)
    if rendered is None:
        rendered = readme_renderer.txt.render(text)
    return rendered or ""
