"""Makes ``twist pypicloud --config FILE`` run the index server."""

from twisted.application.service import ServiceMaker

pypicloud = ServiceMaker(
    "pypicloud-tx",
    "pypicloud_tx.tap",
    "A private Python package index (pypicloud on Twisted)",
    "pypicloud",
)
