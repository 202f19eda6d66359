"""End-to-end tests: ``twist pypicloud`` in a subprocess, driven by real twine, pip and uv."""
