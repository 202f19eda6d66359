"""Finding the real services (PostgreSQL, Redis, ...) that integration tests run against.

``tests/run.sh`` starts them and exports their addresses.  A test that needs an absent service
is skipped locally with a clear reason, but fails loudly under CI (``CI=true``): a skipped test
must never pass for a tested one there.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SkipTest


def require_service(variable: str, what: str) -> str:
    """The value of environment variable ``variable``, or skip (locally) / fail (in CI)."""
    value = os.environ.get(variable)
    if value:
        return value
    message = f"{what} is not available: set {variable} (tests/run.sh starts it and sets it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise AssertionError(message)
    raise SkipTest(message)
