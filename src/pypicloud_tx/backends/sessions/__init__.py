"""Stores of browser sessions (``ISessionStore``)."""
