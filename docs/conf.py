"""Sphinx configuration for sweeper's docs: `make docs` builds them with warnings as errors."""

from __future__ import annotations

project = "sweeper"
author = "sweeper's authors"
copyright = "2026, sweeper's authors"

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
# headings get anchors, so that pages link to each other's sections (`page.md#a-heading`)
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

html_theme = "furo"
html_title = "sweeper"
