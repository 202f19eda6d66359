"""Pure, synchronous rules: names, files, metadata, permissions.  Nothing here imports Twisted."""
