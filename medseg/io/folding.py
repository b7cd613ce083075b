"""Whether an output folder's file system tells names apart that differ only in case (or Unicode normal form).

Linux file systems do; macOS's (APFS, HFS+), Windows' (NTFS, exFAT, SMB shares) and a Docker bind mount of a macOS
folder do not: there ``Case1.nii.gz`` and ``case1.nii.gz`` are one file, and the second case's output would
silently replace the first's (and a rerun take the first for finished). The commands that write one file per input
compare their output names by :func:`name_key` of the output folder before writing anything.
"""

from __future__ import annotations

import os
import tempfile
import unicodedata
from pathlib import Path
from typing import Callable

__all__ = ["folds_names", "name_key"]


def folds_names(folder: str | os.PathLike) -> bool:
    """Whether names differing only in case are one file in ``folder`` (or its nearest existing parent, where the
    output folder is still to be made). A probe file is made and removed; where none can be made (a read-only
    place: writing there fails anyway, with its own message) the answer is ``False``.

    Examples
    --------
    >>> import tempfile
    >>> folds_names(tempfile.gettempdir()) in (True, False)  # True on macOS and Windows, False on Linux
    True
    """
    place = next((p for p in (Path(folder), *Path(folder).parents) if p.is_dir()), None)
    if place is None:
        return False
    try:
        fd, probe = tempfile.mkstemp(prefix=".medseg-CaseProbe-", dir=place)
    except OSError:
        return False
    try:
        os.close(fd)
        head, tail = os.path.split(probe)
        return os.path.exists(os.path.join(head, tail.swapcase()))
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass


def name_key(folder: str | os.PathLike) -> Callable[[str], str]:
    """The key under which two output names in ``folder`` are the same file: the name itself, or, where the file
    system folds case (:func:`folds_names`), its case-folded NFC form (such file systems also equate Unicode
    normal forms: ``é`` typed as one code point or as ``e`` plus an accent).

    Examples
    --------
    >>> import tempfile
    >>> key = name_key(tempfile.gettempdir())
    >>> key("a.nii.gz") in ("a.nii.gz",)
    True
    """
    if folds_names(folder):
        return lambda name: unicodedata.normalize("NFC", name).casefold()
    return lambda name: name
