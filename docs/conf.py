"""Sphinx configuration: the Markdown pages of docs/ as a site (``tox -e docs``).

Build: ``sphinx-build -W -b html docs docs/_build/html`` (warnings are errors, as in CI).  The
configuration reference (reference.md) is generated from the code by ``_ext/ppc_options.py``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ext"))

project = "pypicloud-tx"
author = "the pypicloud-tx authors"
copyright = "the pypicloud-tx authors"

extensions = ["myst_parser", "ppc_options"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "README.md"]

# Headings get GitHub's anchors, so links like configuration.md#the-index-pypi work both on
# GitHub and in the built site.
myst_heading_anchors = 4

html_theme = "alabaster"
html_title = "pypicloud-tx"
html_theme_options = {"page_width": "1200px", "sidebar_width": "240px"}
# _static/custom.css (alabaster loads it): the option tables of reference.md.
html_static_path = ["_static"]
# No "show source" links: the Markdown is in the repository.
html_show_sourcelink = False
