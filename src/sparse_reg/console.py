"""Rich console for tables: full width in a terminal, 120 columns when output is piped or logged."""

from __future__ import annotations

from rich.console import Console


def wide_console(**kwargs) -> Console:
    console = Console(**kwargs)
    if not console.is_terminal:
        console = Console(width=120, **kwargs)
    return console
