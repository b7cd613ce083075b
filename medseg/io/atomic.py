"""Atomic output: write to a temporary file beside the target, then rename.

A crash or a failed write never leaves a half-written output under the final name,
and an input file is never overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

from medseg.errors import InputError, MedsegError

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: the process umask, for the permissions of renamed temp files

_DOUBLE_SUFFIXES = (".nii.gz", ".seg.nrrd", ".tar.gz")


def full_suffix(path: str | os.PathLike) -> str:
    """Return the file's format suffix, keeping double suffixes such as ``.nii.gz``.

    Examples
    --------
    >>> full_suffix("case_001.nii.gz"), full_suffix("a/b.mha"), full_suffix("x.seg.nrrd")
    ('.nii.gz', '.mha', '.seg.nrrd')
    """
    name = Path(path).name.lower()
    for s in _DOUBLE_SUFFIXES:
        if name.endswith(s):
            return s
    return Path(name).suffix


def case_name(path: str | os.PathLike) -> str:
    """File name without its format suffix: the case id used throughout medseg.

    Examples
    --------
    >>> case_name("/data/hippocampus_001.nii.gz")
    'hippocampus_001'
    """
    name = Path(path).name
    return name[: len(name) - len(full_suffix(name))] if full_suffix(name) else name


def looks_full(exc: OSError, folder: Path) -> bool:
    """Whether a failed write ran out of space.

    numpy's ``tofile`` (used by tifffile) reports a short write as a bare OSError with no errno
    ("N requested and M written"), so the errno alone misses it; the free space decides then.
    """
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if exc.errno is not None:
        return False
    if re.search(r"requested and \d+ written", str(exc)):
        return True
    return _no_space_left(folder)


@contextlib.contextmanager
def deferred_interrupts(escape: bool = False) -> Iterator[list[int]]:
    """Hold Ctrl-C, SIGTERM and SIGHUP back until the block ends, then deliver them: for commits of several renames
    (all outputs or none) that a signal between two renames would leave half done, and for training steps (weights,
    optimiser and step counter change together); about 10 microseconds. Outside the main thread (where Python
    cannot set handlers) the block runs unprotected.

    Yields the list of signals held so far, for a long block that polls it and ends early (distributed training
    stops every rank at the same iteration). ``escape``: a second Ctrl-C is delivered at once, so that a block
    stuck before its next poll can still be interrupted (a second SIGTERM is not: Slurm signals every process of a
    job and torchrun signals its workers again). A block that ends with an error other than KeyboardInterrupt
    raises that error and drops the held signals.

    Examples
    --------
    >>> with deferred_interrupts() as held:
    ...     held
    []
    """
    import signal
    import threading

    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return
    old = {}

    def hold(signum, frame):
        if escape and signum == signal.SIGINT and signal.SIGINT in pending:
            restore()
            os.kill(os.getpid(), signum)
        pending.append(signum)

    def restore():
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)  # None: not set from Python
        old.clear()

    failed = False
    try:  # installed inside the try: a signal between the two installs must not leave the first one held for good
        for s in (signal.SIGINT, signal.SIGTERM, *_hangup(signal)):
            old[s] = signal.signal(s, hold)
        yield pending
    except KeyboardInterrupt:
        raise
    except BaseException:
        failed = True  # the block's own error is what the user must see, not "interrupted" in its place
        raise
    finally:
        delivered = not old
        restore()
        if pending and not delivered and not failed:
            os.kill(os.getpid(), pending[0])  # now, to the handler the program had


def _hangup(signal) -> list[int]:
    """SIGHUP, unless ignored (``nohup``; Windows has none): a closed terminal or ssh session ends the run as
    SIGTERM does, and must not cut a commit in two either."""
    hup = getattr(signal, "SIGHUP", None)
    return [] if hup is None or signal.getsignal(hup) is signal.SIG_IGN else [hup]


@contextlib.contextmanager
def atomic_path(
    dest: str | os.PathLike, protect: Iterable[str | os.PathLike] = ()
) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only if the block succeeds.

    ``protect`` lists input paths that must never be overwritten.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "out.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> (d / "out.txt").read_text()
    'done'
    """
    dest = Path(dest)
    for p in protect:
        if Path(p).exists() and dest.exists() and Path(p).resolve() == dest.resolve():
            raise InputError("refusing to overwrite an input file", path=dest)
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        raise InputError("output folder does not exist", path=parent)
    if not os.access(parent, os.W_OK):
        raise InputError("output folder is not writable", path=parent)
    try:  # the temporary name keeps at most 64 characters of the output's, so a name that fits has room for it
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name[:64]}.", suffix=f".tmp{full_suffix(dest)[:16]}", dir=parent)
    except OSError as exc:
        raise InputError(f"cannot write output ({exc.strerror or exc})", path=dest) from exc
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; an output is an ordinary file
    if not _lock(fd):  # held while this process lives: remove_stale_temporaries tells a killed run's file by it
        os.close(fd)  # no locks here (Windows, where an open handle would also stop the rename)
        fd = None
    try:
        yield tmp
        os.replace(tmp, dest)
    except OSError as exc:
        cause = _os_cause(exc)
        full = looks_full(cause, parent)
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write output ({'disk full: ' if full else ''}{cause.strerror or cause})",
                         path=dest) from exc
    except Exception as exc:
        # a writer that reports a failed write as its own error (torch.save: RuntimeError "unexpected pos"): on a
        # full disk that is the user's to fix, not a bug; told by the free space, before the temporary file goes
        full = not isinstance(exc, MedsegError) and _no_space_left(parent)
        tmp.unlink(missing_ok=True)
        if full:
            raise InputError("cannot write output (disk full: No space left on device)", path=dest) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)


def _lock(fd: int, wait: bool = False) -> bool:
    """Lock an open file or folder (``flock``, exclusive; not waiting unless ``wait``); whether it could be (no
    locks on Windows or some network file systems). The lock goes with the descriptor, also when the process dies."""
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except (ImportError, OSError):
        return False
    return True


# atomic_path's temporary names: '.' + (up to 64 characters of) the output's name + mkstemp's 8 characters + '.tmp'
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp(\.[^/]{0,16})?")


def remove_stale_temporaries(folder: str | os.PathLike, min_age_s: float = 60.0) -> int:
    """Remove the temporary files :func:`atomic_path` left in ``folder`` when its process was killed outright
    (SIGKILL, the OOM killer, a power cut: no cleanup ran), which would otherwise stay for good, hidden, as large
    as the outputs (a checkpoint, a probability map). A temporary file counts as left only when no process holds
    its lock and it is at least ``min_age_s`` old (one being created has not been locked yet); returns how many.

    Examples
    --------
    >>> import tempfile, time
    >>> d = Path(tempfile.mkdtemp()); left = d / ".seg.nii.gz.a1b2c3d4.tmp.nii.gz"; _ = left.write_text("x")
    >>> os.utime(left, (time.time() - 3600,) * 2)  # an hour old, and nobody's
    >>> remove_stale_temporaries(d), left.exists()
    (1, False)
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    now = time.time()
    for e in entries:
        if not _TEMPORARY.fullmatch(e.name):
            continue
        try:
            if not e.is_file(follow_symlinks=False) or now - e.stat(follow_symlinks=False).st_mtime < min_age_s:
                continue
            fd = os.open(e.path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _lock(fd):  # nobody's: still locked by us while it goes, so no other sweeper's run takes it meanwhile
                os.unlink(e.path)
                removed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _os_cause(exc: OSError) -> OSError:
    """The OSError that says what happened: pydicom re-raises a failed write as a new OSError without errno whose
    text holds the original's traceback (``raise type(exc)(msg) from exc``); its cause has the errno and the words."""
    while exc.errno is None and isinstance(exc.__cause__, OSError):
        exc = exc.__cause__
    return exc


def _no_space_left(folder: Path) -> bool:
    """Whether ``folder``'s file system has (almost) no space left, as after a write that failed for it."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False
    return st.f_bavail * st.f_frsize < 1 << 20
