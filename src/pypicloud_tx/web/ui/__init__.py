"""The web interface: server-rendered pages for people with a browser.

Browse and search the index, read a project's page, upload, delete and yank files, log in,
register, change one's password, manage API tokens, and (admins) manage users, groups and
permissions.  Pages work without JavaScript; ``static/ui.js`` only adds conveniences.

Identity here comes from the session cookie alone (:mod:`.session`), never from HTTP Basic
credentials, and the cookie is honoured nowhere else: the package API keeps Basic
credentials only, so no cookie can ever be used against it from another site.
"""

from __future__ import annotations

from klein import Klein

from pypicloud_tx.web.context import WebContext
from pypicloud_tx.web.ui.account import add_account_routes
from pypicloud_tx.web.ui.actions import add_action_routes
from pypicloud_tx.web.ui.browse import add_browse_routes
from pypicloud_tx.web.ui.console import add_console_routes
from pypicloud_tx.web.ui.render import Pages


def add_ui_routes(app: Klein, ctx: WebContext) -> None:
    """Register every page of the web interface."""
    pages = Pages(ctx)
    add_browse_routes(app, pages)
    add_action_routes(app, pages)
    add_account_routes(app, pages)
    add_console_routes(app, pages)
