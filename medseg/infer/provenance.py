"""What made a predicted label map: the model file's digest, the options that change its voxels and a digest of
its input files.

``medseg predict`` skips cases whose label map exists, so that an interrupted or sharded cohort run continues
where it stopped. A label map from another model, made with other options or from an input that has since
changed must not pass for finished: each label map carries its record in a NIfTI comment extension (viewers ignore
it), and a rerun compares it before predicting anything.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

from medseg.errors import InputError

_ECODE = 6  # NIfTI "comment" extension: free text that readers which do not know it skip
_KEY = "medseg_predict"
# options compared on a rerun; the device, batch size and medseg version are recorded but may differ (they
# change no voxel beyond floating-point rounding)
_COMPARED = ("model_sha256", "overlap", "tta", "largest_component", "min_size_mm3")


def prediction_record(model_sha256: str, overlap: float, tta: bool, largest_component: bool = False,
                      min_size_mm3: float = 0.0, **extra) -> dict:
    """The record a label map carries; ``extra`` (e.g. the model's path, the medseg version) is not compared.

    Examples
    --------
    >>> prediction_record("ab" * 32, 0.5, True)["tta"]
    True
    """
    return {"model_sha256": model_sha256, "overlap": float(overlap), "tta": bool(tta),
            "largest_component": bool(largest_component), "min_size_mm3": float(min_size_mm3), **extra}


def attach_record(nimg, record: dict) -> None:
    """Store ``record`` in a nibabel NIfTI image's header (a comment extension), replacing an earlier one.

    Parameters
    ----------
    nimg : nibabel.Nifti1Image
        The label map about to be saved; its header is changed in place.
    record : dict
        What :func:`prediction_record` returns (JSON-serialisable).

    Examples
    --------
    >>> import nibabel as nib, numpy as np
    >>> nimg = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    >>> attach_record(nimg, prediction_record("ab" * 32, 0.5, False))
    >>> attach_record(nimg, prediction_record("ab" * 32, 0.25, False))  # replaces the first
    >>> len(nimg.header.extensions)
    1
    """
    import nibabel as nib

    exts = nimg.header.extensions
    for e in [e for e in exts if e.get_code() == _ECODE and _KEY.encode() in e.get_content()[:40]]:
        exts.remove(e)
    exts.append(nib.nifti1.Nifti1Extension(_ECODE, json.dumps({_KEY: record}, sort_keys=True).encode()))


def read_record(path: str | os.PathLike) -> dict | None:
    """The record of a label map written by ``medseg predict``; None when it has none (written by another tool
    or an older medseg). Reads the header only.

    Parameters
    ----------
    path : path
        A NIfTI label map; one that cannot be read is an ``InputError``.

    Returns
    -------
    dict or None

    Examples
    --------
    >>> import nibabel as nib, numpy as np, tempfile
    >>> nimg = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    >>> path = Path(tempfile.mkdtemp()) / "case.nii.gz"
    >>> nib.save(nimg, path)
    >>> read_record(path) is None
    True
    >>> attach_record(nimg, prediction_record("ab" * 32, 0.5, False))
    >>> nib.save(nimg, path)
    >>> read_record(path)["overlap"]
    0.5
    """
    import nibabel as nib

    try:
        exts = nib.load(str(path)).header.extensions
    except Exception as exc:
        raise InputError(f"cannot read this existing output ({type(exc).__name__}); --overwrite replaces it",
                         path=path) from None
    for e in exts:
        if e.get_code() != _ECODE:
            continue
        try:
            d = json.loads(e.get_content().decode())
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(d, dict) and isinstance(d.get(_KEY), dict):
            return d[_KEY]
    return None


def record_difference(old: dict | None, new: dict) -> str | None:
    """Why a label map with record ``old`` is not the prediction ``new`` asks for; None when it is.

    Examples
    --------
    >>> a = prediction_record("ab" * 32, 0.5, True)
    >>> record_difference(a, {**a, "tta": False})
    'it was predicted with tta True, this run asks for False'
    >>> record_difference(a, {**a, "medseg_version": "9"}) is None
    True
    """
    if old is None:
        return "it holds no record of the model that made it (another tool or an older medseg wrote it)"
    if old.get("model_sha256") != new["model_sha256"]:
        return (f"it was predicted by another model (sha256 {str(old.get('model_sha256'))[:12]}…, "
                f"this one {new['model_sha256'][:12]}…)")
    for key in _COMPARED[1:]:
        if old.get(key) != new[key]:
            return f"it was predicted with {key} {old.get(key)}, this run asks for {new[key]}"
    if "input_sha256" in new and "input_sha256" in old and old["input_sha256"] != new["input_sha256"]:
        return "its input has changed since it was predicted (another file under the same name)"
    return None


def check_finished(dest: Path, record: dict) -> dict:
    """``InputError`` when the existing label map ``dest`` was made by another model, with other options or from
    another input; else its record (whose ``extras`` names the extra outputs written with it).

    Parameters
    ----------
    dest : Path
        An existing label map.
    record : dict
        This run's record for that case (:func:`prediction_record`, plus its ``input_sha256``).

    Returns
    -------
    dict
        The record ``dest`` carries.

    Raises
    ------
    InputError
        With the reason (:func:`record_difference`) and the way out (``--overwrite``).

    Examples
    --------
    >>> import nibabel as nib, numpy as np, tempfile
    >>> record = prediction_record("ab" * 32, 0.5, False)
    >>> nimg = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    >>> attach_record(nimg, record)
    >>> dest = Path(tempfile.mkdtemp()) / "case.nii.gz"
    >>> nib.save(nimg, dest)
    >>> check_finished(dest, record)["overlap"]
    0.5
    >>> check_finished(dest, {**record, "tta": True})
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: ...: it was predicted with tta False, this run asks for True; pass --overwrite ...
    """
    old = read_record(dest)
    why = record_difference(old, record)
    if why:
        raise InputError(f"an existing output is not this run's prediction: {why}; pass --overwrite to predict "
                         "it again, or choose another output folder", path=dest)
    return old


@contextlib.contextmanager
def record_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold the output folder's lock (``flock`` on the folder itself, waiting for it) while a label map and its
    record are rewritten: two runs that each read a record, add their export and write it back would otherwise
    drop each other's (and a run adding an export to a label map that another run replaced meanwhile would put
    the old voxels under the new record). The folder, not the label map, is locked: the rename that writes the
    label map replaces its inode, and a lock file beside it would have to be removed again. Where there are no
    locks (Windows, some network file systems) the block runs unlocked, as before.

    Examples
    --------
    >>> import tempfile
    >>> with record_lock(tempfile.mkdtemp()):
    ...     pass
    """
    from medseg.io.atomic import _lock

    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        fd = None
    try:
        if fd is not None:
            _lock(fd, wait=True)
        yield
    finally:
        if fd is not None:
            os.close(fd)


def add_extra(dest: Path, extra: str, voxels, made_from: dict, protect=()) -> bool:
    """Record in the label map ``dest`` that ``extra`` (an export) was written from it, under :func:`record_lock`;
    whether it was recorded. Not when ``dest`` no longer carries ``made_from`` (its record when the export was
    made, ``extras`` aside): another run predicted it again meanwhile, and the export is of the voxels it replaced.

    Parameters
    ----------
    dest : Path
        The label map (NIfTI), rewritten atomically with its header as it now is.
    extra : str
        Added to the record's ``extras``.
    voxels : ndarray
        The label map's voxels as stored (read with ``made_from``; other exports rewrite the same voxels).
    made_from : dict
        The record ``dest`` carried when ``voxels`` were read.
    protect : paths
        Input files never overwritten (:func:`medseg.io.atomic.atomic_path`).
    """
    import nibabel as nib

    from medseg.io.atomic import atomic_path

    def prediction(record):
        return {k: v for k, v in (record or {}).items() if k != "extras"}

    with record_lock(dest.parent):  # read, modify, write: no other run's record in between
        now = read_record(dest)
        if now is None or prediction(now) != prediction(made_from):
            return False
        old = nib.load(str(dest))
        nimg = type(old)(voxels, None, old.header)  # NIfTI-2 where the map has more than 32767 slices
        attach_record(nimg, {**now, "extras": sorted(set(now.get("extras", [])) | {extra})})
        with atomic_path(dest, protect=protect) as tmp:
            nib.save(nimg, str(tmp))
    return True


class CaseRecords:
    """A run's record (:func:`prediction_record`) and, per case, that record plus a digest of the case's input
    files (a re-converted or corrected input under the same name is not finished); each case's files are hashed
    once per run.

    Examples
    --------
    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "a.nii.gz"
    >>> _ = f.write_bytes(b"x")
    >>> records = CaseRecords(prediction_record("ab" * 32, 0.5, False))
    >>> records.of("a", [f])["input_sha256"] == records.of("a", [])["input_sha256"]  # hashed once, by case name
    True
    """

    def __init__(self, run: dict):
        self.run = run
        self._done: dict[str, dict] = {}

    def of(self, name: str, files: list[Path]) -> dict:
        if name not in self._done:
            import hashlib

            from medseg.data import file_digest

            joined = "".join(file_digest(f, "sha256") for f in files)
            self._done[name] = {**self.run, "input_sha256": hashlib.sha256(joined.encode()).hexdigest()}
        return self._done[name]
