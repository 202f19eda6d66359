"""Tests of the service layer (``pypicloud_tx.services``)."""
