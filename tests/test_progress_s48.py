"""Progress bars go to stderr, and only where stderr is a terminal: a command's stdout (its summary, the files it
wrote) is what scripts read, and a bar or the blank line a finished bar leaves there was mixed into it."""

from __future__ import annotations

import io
import os

from conftest import data_path, run_cli


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_cell_counting_writes_only_its_summary_to_stdout(tmp_path, monkeypatch):
    """Two real images counted with the bar asked for (the CLI's default) and stdout no terminal: the old bar left a
    blank first line on stdout before the summary."""
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)  # what a user's shell has: no test in progress
    src = tmp_path / "in"
    src.mkdir()
    for p in sorted(data_path("dsb2018_fluo", "images").glob("*.png"))[:2]:
        os.symlink(p, src / p.name)
    res = run_cli("cells", "count", "--classical", "-i", src, "-o", tmp_path / "out")
    assert res.code == 0, res.err
    assert res.out.splitlines()[0].strip() and "cells in 2 image" in res.out.splitlines()[0], repr(res.out)


def test_bars_draw_on_a_terminal_stderr_and_never_on_stdout(monkeypatch, capsys):
    """The shared helper the commands use: items unchanged, a bar on stderr when it is a terminal, none otherwise."""
    import sys

    from medseg.progress import shown, track

    assert list(track(range(3), "x", enabled=True)) == [0, 1, 2] and not shown(True)  # captured stderr: no terminal
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert shown(True) and not shown(False)
    assert list(track(range(3), "working", enabled=True)) == [0, 1, 2]
    assert capsys.readouterr().out == ""
