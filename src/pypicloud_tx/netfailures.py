"""Describing why an outgoing HTTP exchange (treq) failed, for one-line messages."""

from __future__ import annotations

from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError
from twisted.web._newclient import RequestTransmissionFailed
from twisted.web.client import ResponseFailed, ResponseNeverReceived


def cancelled(failure: BaseException) -> bool:
    """Whether ``failure`` is a cancellation, perhaps wrapped by the HTTP client."""
    if isinstance(failure, CancelledError):
        return True
    reasons = getattr(failure, "reasons", None) or []
    return any(r.check(CancelledError) for r in reasons)


def reason(failure: BaseException) -> str:
    """What went wrong reaching the other side, in a few words."""
    if isinstance(failure, (ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed)):
        reasons = getattr(failure, "reasons", None) or []
        if reasons:
            return reason(reasons[0].value)
    if isinstance(failure, net_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(failure, net_error.DNSLookupError):
        return "the host name does not resolve"
    if isinstance(failure, net_error.TimeoutError):
        return "connecting timed out"
    if isinstance(failure, (net_error.ConnectionLost, net_error.ConnectionDone)):
        return "the connection closed before the answer was complete"
    return " ".join(str(failure).split()) or type(failure).__name__
