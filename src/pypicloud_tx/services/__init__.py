"""The rules of the index, written against the interfaces (never a concrete backend)."""
