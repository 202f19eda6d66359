"""Tests of the concrete backends, each against its interface's conformance suite."""
