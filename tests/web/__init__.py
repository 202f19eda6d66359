"""Tests for pypicloud_tx.web."""
