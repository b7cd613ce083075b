"""Progress bars on stderr, shown only where stderr is a terminal.

A command's stdout carries its summary and the files it wrote, which scripts read (``medseg cells count ... | tee``);
a bar drawn there, or the blank line a transient bar leaves when stdout is no terminal, would be mixed into it.
Bars are drawn by the main thread only: calls made from several threads at once (a thread pool, a web server) would
each draw one on the same lines of the terminal, over each other.
"""

from __future__ import annotations

import sys
import threading

__all__ = ["bar_console", "shown", "track"]


def shown(enabled: bool) -> bool:
    """Whether a bar the caller asks for (``enabled``) is drawn: only on a terminal, and only by the main thread (each
    rich bar redraws its lines on its own; two from calls in other threads overwrote each other and the text between).

    Examples
    --------
    >>> shown(False)
    False
    """
    return bool(enabled) and threading.current_thread() is threading.main_thread() and sys.stderr.isatty()


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
