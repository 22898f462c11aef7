"""Sphinx configuration of hotpot_km's documentation (MyST Markdown, pydata-sphinx-theme).

The configuration and metrics references are generated from the code at build time by
``_ext/hotpot_reference.py``; ``make docs`` builds with warnings as errors.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))

import hotpot_km  # noqa: E402

project = "hotpot_km"
author = "hotpot_km developers"
copyright = "hotpot_km developers"
version = release = hotpot_km.__version__

extensions = ["myst_parser", "hotpot_reference"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "README.md"]

myst_enable_extensions = ["deflist", "colon_fence"]
myst_heading_anchors = 3

html_theme = "pydata_sphinx_theme"
html_title = "hotpot_km"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path: list[str] = []
nitpicky = True
smartquotes = False  # options such as --url stay as typed
