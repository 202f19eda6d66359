"""Tests of the cache backends."""
