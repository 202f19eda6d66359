"""Concrete storage, cache and access backends.  Each is imported only when configured."""
