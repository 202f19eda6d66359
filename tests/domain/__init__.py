"""Tests for pypicloud_tx.domain."""
