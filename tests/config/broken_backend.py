"""A module that fails while being imported, as a broken third-party backend would."""

raise RuntimeError("this backend module is broken\nsecond line that must not reach the message")
