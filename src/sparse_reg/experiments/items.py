"""One entry of a report's ``index.md``: what the table and figure modules hand the report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Item:
    """A figure or a table file, with its caption, under a heading of index.md."""

    heading: str
    path: Path
    caption: str
    inline: str | None = None  # Markdown shown in index.md (tables)
