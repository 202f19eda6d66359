"""pypicloud-tx: a private Python package index on Twisted and Klein."""

__version__ = "0.1.0"
