"""Tests of the access backends."""
