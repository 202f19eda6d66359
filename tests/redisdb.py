"""Cleaning up after tests on the shared Redis server."""

from __future__ import annotations


def delete_redis_keys(url: str, prefix: str) -> None:
    """Remove every key under ``prefix`` (with redis-cli: the tests run no reactor here)."""
    import subprocess
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    base = ["redis-cli", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    db = (parts.path or "/0").lstrip("/") or "0"
    base += ["-n", db]
    keys = subprocess.run(
        [*base, "--scan", "--pattern", f"{prefix}*"], capture_output=True, text=True, timeout=30
    ).stdout.split()
    for start in range(0, len(keys), 500):
        subprocess.run([*base, "DEL", *keys[start : start + 500]], capture_output=True, timeout=30)
