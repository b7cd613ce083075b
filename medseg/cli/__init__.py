"""``medseg`` command line: a thin layer over the Python API.

Exit codes: 0 success, 2 bad input or usage (one line on stderr), 1 unexpected failure.
``--debug`` (anywhere on the command line, or ``MEDSEG_DEBUG=1``) shows tracebacks.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
import warnings
from typing import NoReturn

import typer

from medseg.cli.app import app
from medseg.errors import MedsegError, PeerRefused

# Each module registers its commands on ``app`` (one module per pipeline stage).
from medseg.cli import io_cmds, evaluate_cmds, train_cmds, cells_cmds, export_cmds, demo_cmds, data_cmds  # noqa: E402,F401


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MEDSEG_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    with _quiet_libraries(debug), _termination_as_interrupt():
        return _run(argv, debug)


def console(argv: list[str] | None = None) -> NoReturn:
    """The ``medseg`` program (console script, ``python -m medseg``): :func:`main`, then exit with its code.

    A torchrun rank ends without the interpreter's teardown (:func:`medseg.train.ddp.end_process`), after the
    atexit handlers (logging, temporary folders) and a flush of stdout and stderr: in torch 2.13 gloo's process
    group and its threads outlive ``destroy_process_group`` once DDP has imported torch._inductor
    (:func:`medseg.train.ddp.cleanup`), and tearing them down at exit can abort the process ('terminate called
    without an active exception', SIGABRT) after the run has succeeded, which torchrun reports as a failed run."""
    code = main(argv)
    if _started_distributed():
        sys.modules["medseg.train.ddp"].end_process(code)
    sys.exit(code)


def _started_distributed() -> bool:
    ddp = sys.modules.get("medseg.train.ddp")  # never imported: no process group either
    return bool(ddp is not None and ddp.started())


class _termination_as_interrupt:
    """SIGTERM (what Slurm and Kubernetes send) and SIGHUP (a closed terminal or ssh session; not under ``nohup``)
    raise KeyboardInterrupt as Ctrl-C does, so that the same cleanup runs (temporary files and staging folders
    removed) instead of the process dying on the spot."""

    received = 0  # the signal that stopped the run, if one of these did

    def __enter__(self):
        import signal
        import threading

        from medseg.io.atomic import _hangup

        self.installed = threading.current_thread() is threading.main_thread()  # else Python cannot set one
        self.old = {}
        if self.installed:
            for s in (signal.SIGTERM, *_hangup(signal)):
                self.old[s] = signal.signal(s, self._raise)
        type(self).received = 0

    @classmethod
    def _raise(cls, signum, frame):
        cls.received = signum
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        import signal

        for s, old in self.old.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)


class _quiet_libraries:
    """Without --debug: nibabel's header notes off stderr (medseg's own line says what matters), and matplotlib's
    log lines (where HOME is not writable, as under ``docker run --user "$(id -u):$(id -g)"`` with HOME=/, its import
    logged two lines about a temporary config folder, which it makes and removes itself); Python warnings as one
    line each, without the library's source line, and no "Exception ignored in" tracebacks from a library object's
    clean-up (an interrupt inside imageio's reader left one that failed in ``__del__``)."""

    LOGGERS = ("nibabel", "matplotlib")

    def __init__(self, debug: bool):
        self.debug = debug

    def __enter__(self):
        self.saved = [logging.getLogger(n).level for n in self.LOGGERS], warnings.showwarning, sys.unraisablehook
        if not self.debug:
            for name in self.LOGGERS:
                logging.getLogger(name).setLevel(logging.CRITICAL + 1)
            warnings.showwarning = _warning_line
            sys.unraisablehook = _ignore_unraisable

    def __exit__(self, *exc):
        for name, level in zip(self.LOGGERS, self.saved[0]):
            logging.getLogger(name).setLevel(level)
        warnings.showwarning, sys.unraisablehook = self.saved[1:]


def _ignore_unraisable(unraisable) -> None:
    """An error in a finaliser (``__del__``) after the command's own outcome is known: nothing a user can act on."""


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"medseg: warning: {_one_line(message)}", file=file or sys.stderr)


def _expand_home(arg: str) -> str:
    """``--out=~/x`` → ``--out=/home/me/x``: the shell expands ``~`` only at the start of a word, and a folder
    named ``~`` in the working directory is never what was meant."""
    if arg.startswith("--") and "=~" in arg:
        opt, value = arg.split("=", 1)
        if value == "~" or value.startswith("~/"):
            return f"{opt}={os.path.expanduser(value)}"
    return arg


def _run(argv: list[str], debug: bool) -> int:
    argv = [_expand_home(a) for a in argv]
    try:
        rv = app(args=argv, prog_name="medseg", standalone_mode=False)
        if rv == 130:  # typer turns KeyboardInterrupt into Exit(130), which it returns outside standalone mode
            return _interrupted()
        return rv if isinstance(rv, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("medseg: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:  # usage errors (bad option, missing argument): one line, exit 2
        msg = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if _one_line(msg):  # empty for 'no arguments, help shown'
            print(f"medseg: error: {_one_line(msg)} (see 'medseg --help')", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2) or 2)
    except PeerRefused as exc:
        return _stopped_by_peer(exc)
    except MedsegError as exc:
        if debug:  # the traceback, and still the exit code scripts test
            traceback.print_exc()
        print(f"medseg: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if not _user_side(exc):
            return _internal(exc, debug)
        if debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"medseg: error: {where}{_one_line(exc.strerror or exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted()
    except MemoryError as exc:  # the machine's limit, not a bug: still exit 1 (an unexpected failure), named so
        if debug:
            traceback.print_exc()
        detail = f" ({_one_line(exc)})" if _one_line(exc) else ""
        print(f"medseg: error: out of memory{detail}: the input or settings need more memory than this process "
              "can allocate (free memory, or use smaller inputs, patches or batches)", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug in medseg: still one line unless --debug
        return _internal(exc, debug)


PEER_EXIT_WAIT_S = 60.0  # at most, for torchrun to stop a rank whose peer refused the input


def _stopped_by_peer(exc: PeerRefused) -> int:
    """A torchrun rank stopped because another refused the input: one line that is not an error of its own, then
    it waits for torchrun to stop it (bounded), so that torchrun names the refusing rank as the root cause."""
    import time

    print(f"medseg: {_one_line(exc)}", file=sys.stderr)
    try:
        time.sleep(PEER_EXIT_WAIT_S)
    except KeyboardInterrupt:
        return _interrupted()
    return exc.exit_code


def _internal(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"medseg: internal error: {type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)",
          file=sys.stderr)
    return 1


# what the file system answers about the user's paths (a read-only mount, a name too long, a full disk, a link
# loop), not a bug in medseg: one line and exit 2, like a missing file
_USER_ERRNOS = {errno.ENOENT, errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS,
                errno.ENAMETOOLONG, errno.ENOSPC, errno.EDQUOT, errno.ELOOP, errno.ENOTEMPTY, errno.EXDEV}


def _user_side(exc: OSError) -> bool:
    return exc.errno in _USER_ERRNOS or isinstance(exc, (FileNotFoundError, FileExistsError, IsADirectoryError,
                                                         NotADirectoryError, PermissionError))


def _interrupted() -> int:
    """One line and the shell's code: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    import signal

    got = _termination_as_interrupt.received
    if got:
        hangup = got == getattr(signal, "SIGHUP", None)
        print(f"medseg: {'hangup' if hangup else 'terminated'}", file=sys.stderr)
        return 128 + int(got)
    print("medseg: interrupted", file=sys.stderr)
    return 130


__all__ = ["app", "console", "main"]
