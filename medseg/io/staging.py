"""Several outputs that appear together: staged in a hidden folder, moved into place only when all exist.

:func:`medseg.io.atomic.atomic_path` makes one file appear whole; a command writing several files (one per image or
series, and a table of them all) also must not leave the earlier ones behind when a later one fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, ContextManager, Iterable, Iterator

from medseg.errors import InputError
from medseg.io.atomic import _lock, atomic_path, deferred_interrupts, looks_full

Place = Callable[[str], ContextManager[Path]]

_PREFIX = ".medseg-stage."
_LOCK = ".lock"  # inside a stage, locked while its run lives: a killed run's lock is released by the kernel


def refuse_folder(dest: Path) -> None:
    """Raise ``InputError`` when an output's name is taken by a folder (a rename onto it would fail half-way).

    Parameters
    ----------
    dest : Path
        Where an output is about to be renamed to.

    Examples
    --------
    >>> refuse_folder(Path(tempfile.mkdtemp()))
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: ...: an output's name is taken by a folder (move or rename it)
    """
    if dest.is_dir():
        raise InputError("an output's name is taken by a folder (move or rename it)", path=dest)


@contextlib.contextmanager
def staged_outputs(out_dir: str | os.PathLike, protect: Iterable[str | os.PathLike] = (),
                   last: Iterable[str] = ()) -> Iterator[Place]:
    """Yield ``place(name)``, a context manager giving a temporary path for the output ``out_dir / name``.

    The outputs are written to a hidden folder inside ``out_dir`` and renamed to their final names only when the
    block succeeds, so that a failure part-way (a bad image, a full disk) leaves none of them. ``out_dir`` is made
    if missing (and removed again if it is still empty afterwards). ``protect`` lists inputs that an output must
    never replace; the names in ``last`` (a summary table) are moved after the others.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "out"
    >>> with staged_outputs(d) as place:
    ...     for name in ("a.txt", "b.txt"):
    ...         with place(name) as tmp:
    ...             _ = tmp.write_text(name)
    >>> sorted(p.name for p in d.iterdir())
    ['a.txt', 'b.txt']
    """
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    stage = _make_stage(out_dir)
    lock = None

    @contextlib.contextmanager
    def place(name: str) -> Iterator[Path]:
        try:
            with atomic_path(stage / name) as tmp:
                yield tmp
        except InputError as exc:
            if exc.path is None or stage not in (Path(exc.path), *Path(exc.path).parents):
                raise  # about an input: keep its name
            raise InputError(exc.problem, path=out_dir / name) from exc  # the output asked for, not the stage

    try:  # from the stage's creation on: an interrupt anywhere after it removes the stage
        try:
            lock = _hold(stage)
        except OSError:  # no room even for an empty file: the first output will say so
            pass
        _remove_stale_stages(out_dir)
        yield place
        _move_outputs(stage, out_dir, protect, set(last))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if lock is not None:
            os.close(lock)
        if created:
            with contextlib.suppress(OSError):
                if not any(out_dir.iterdir()):
                    out_dir.rmdir()


def _make_stage(out_dir: Path, tries: int = 3) -> Path:
    """Make ``out_dir`` (if missing) and a stage inside it. Another run that made the folder and failed removes it
    while it is empty, which can fall between the two steps: the folder is then made again."""
    for attempt in range(tries):
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file on the way (-o a/b with a a file), no permission
            raise InputError(f"cannot create the output folder ({exc.strerror or exc})", path=out_dir) from exc
        if not os.access(out_dir, os.W_OK):
            raise InputError("output folder is not writable", path=out_dir)
        try:
            return Path(tempfile.mkdtemp(prefix=_PREFIX, suffix=".tmp", dir=out_dir))
        except FileNotFoundError:
            if attempt == tries - 1:
                raise InputError("cannot write output (the folder was removed while it was being written)",
                                 path=out_dir) from None
        except OSError as exc:
            full = "disk full: " if looks_full(exc, out_dir) else ""
            raise InputError(f"cannot write output ({full}{exc.strerror or exc})", path=out_dir) from exc
    raise AssertionError("unreachable")


def _move_outputs(stage: Path, out_dir: Path, protect: Iterable[str | os.PathLike], last: set[str]) -> None:
    """Rename the staged outputs into ``out_dir``. Each rename is atomic but not all of them together, so every
    destination is checked first: a folder made under an output's name meanwhile, or an output that would replace
    an input, stops the move before anything is moved."""
    outputs = [p for p in stage.iterdir() if p.name not in (_LOCK, _LOCK + ".new")]
    staged = sorted(outputs, key=lambda p: p.name in last)
    inputs = {Path(p).resolve() for p in protect if Path(p).exists()}
    for p in staged:
        dest = out_dir / p.name
        refuse_folder(dest)
        if dest.exists() and dest.resolve() in inputs:
            raise InputError("refusing to overwrite an input file", path=dest)
    with deferred_interrupts():  # a Ctrl-C between two renames would leave some outputs in place
        for p in staged:
            try:
                os.replace(p, out_dir / p.name)
            except OSError as exc:
                problem = f"cannot move the output into place ({exc.strerror or exc})"
                raise InputError(problem, path=out_dir / p.name) from exc


def _hold(stage: Path) -> int | None:
    """Create the stage's lock file and lock it (``flock``) for as long as this run lives; returns its descriptor,
    or None where the file system has no locks (the stage is then never taken for a dead run's)."""
    # locked under another name, then renamed: a sweeper never finds the lock file before it is locked
    fd = os.open(stage / (_LOCK + ".new"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if _lock(fd):
            os.rename(stage / (_LOCK + ".new"), stage / _LOCK)
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _remove_stale_stages(out_dir: Path) -> None:
    """Remove the stages of runs that were killed (SIGKILL, the OOM killer, a power cut: no cleanup ran), which
    hold whole copies of their outputs: a stage counts as dead only when its lock file can be locked, so a live
    run's (this one's, another process writing the same folder) and one without a lock file are kept."""
    for stage in out_dir.glob(f"{_PREFIX}*.tmp"):
        try:
            fd = os.open(stage / _LOCK, os.O_RDWR)
        except OSError:  # none (an older medseg's stage, or one being made or removed): not known to be dead
            continue
        try:
            if _lock(fd):  # else locked by a live run, or no locks here (Windows): keep it
                shutil.rmtree(stage, ignore_errors=True)  # still locked by us: no other sweeper takes it meanwhile
        finally:
            os.close(fd)
