"""Progress bars on stderr, shown only where stderr is a terminal.

A command's stdout carries its summary and the files it wrote, which scripts read (``medseg cells count ... | tee``);
a bar drawn there, or the blank line a transient bar leaves when stdout is no terminal, would be mixed into it.
"""

from __future__ import annotations

import sys

__all__ = ["bar_console", "shown", "track"]


def shown(enabled: bool) -> bool:
    """Whether a bar the caller asks for (``enabled``) is drawn: only on a terminal.

    Examples
    --------
    >>> shown(False)
    False
    """
    return bool(enabled) and sys.stderr.isatty()


def bar_console():
    """The rich console progress bars draw on (stderr)."""
    from rich.console import Console

    return Console(stderr=True)


def track(items, description: str, enabled: bool, total: int | None = None):
    """``items``, with a transient bar on stderr where :func:`shown` says so.

    Examples
    --------
    >>> list(track([1, 2], "counting", enabled=False))
    [1, 2]
    """
    if not shown(enabled):
        return items
    from rich.progress import track as rich_track

    return rich_track(items, total=total, description=description, transient=True, console=bar_console())
