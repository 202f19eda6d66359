"""Tests of the configuration loader, option parsing and backend registry."""
