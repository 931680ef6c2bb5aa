"""Rich console for tables: full width in a terminal; when output is piped or logged, wide enough
that no table is truncated or wrapped (tables are as wide as their content)."""

from __future__ import annotations

from rich.console import Console

PIPED_WIDTH = 1_000


def wide_console(**kwargs) -> Console:
    console = Console(**kwargs)
    if not console.is_terminal:
        console = Console(width=PIPED_WIDTH, **kwargs)
    return console
