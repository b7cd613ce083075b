"""Which DICOM series of a folder to take, and what to call them: the rule ``medseg convert`` and ``medseg predict``
share, so that a series converted to ``OUT/<name>.nii.gz`` and predicted as case ``<name>`` get the same name.

``pick_series(path, which)`` discovers the series under ``path`` and takes every volume series (images that can
never be volumes, such as screenshots, are skipped with a note), or the one ``which`` picks (index or
SeriesInstanceUID, as ``medseg info`` lists them). ``series_case_names`` names them.

Examples
--------
>>> from medseg.io.series_names import pick_series
>>> picked = pick_series("../shared/data/dicom/mr_study")  # doctest: +SKIP
>>> picked.names[:2]  # doctest: +SKIP
['12-T1post-05670', '34909-T1prereg-84610']
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.errors import InputError
from medseg.io.atomic import case_name

if TYPE_CHECKING:
    from medseg.io.dicom import SeriesInfo


@dataclass
class PickedSeries:
    """The series :func:`pick_series` took, in discovery order.

    Attributes
    ----------
    series : list of SeriesInfo
        The picked series (a picked one may still have a ``problem``: loading it says why).
    names : list of str
        The output name of each series (see :func:`series_case_names`), in the same order.
    notes : list of str
        One ``medseg: note: ...`` line per skipped non-volume series, for the caller to print once its
        input has passed every check.
    """

    series: list["SeriesInfo"]
    names: list[str]
    notes: list[str] = field(default_factory=list)


def pick_series(path: str | os.PathLike, which: str | int | None = None, single: bool = False,
                progress: bool = False) -> PickedSeries:
    """Discover the DICOM series under ``path`` and take the volumes, or the one ``which`` picks.

    Parameters
    ----------
    path : path
        A DICOM file or a folder (searched recursively).
    which : str or int, optional
        Index or SeriesInstanceUID (:func:`medseg.io.dicom.select_series`): only that series, volume or not.
    single : bool
        Take one series even without ``which`` (a single output file): an ``InputError`` when there are several.
    progress : bool
        Progress bar while reading headers.

    Returns
    -------
    PickedSeries
        The series taken, their output names and the notes about skipped ones.

    Raises
    ------
    InputError
        No DICOM image series; only non-volume images (when taking every volume); a ``which`` that picks nothing.

    Examples
    --------
    A study folder with two series in their own folders, made from pydicom's example CT:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from pydicom import examples
    >>> from pydicom.uid import generate_uid
    >>> study = Path(tempfile.mkdtemp())
    >>> for name in ("arterial", "venous"):
    ...     (study / name).mkdir()
    ...     series = generate_uid()
    ...     for k in range(3):  # three slices, 5 mm apart
    ...         ds = examples.ct
    ...         ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ...         ds.SeriesInstanceUID, ds.SeriesDescription = series, name
    ...         ds.ImagePositionPatient[2] += 5 * k
    ...         ds.save_as(study / name / f"{k}.dcm")
    >>> picked = pick_series(study)
    >>> picked.names, [s.label() for s in picked.series]
    (['arterial', 'venous'], ['0: arterial (CT, 3 slices)', '1: venous (CT, 3 slices)'])
    >>> pick_series(study, 1).names  # a picked series keeps its name
    ['venous']
    """
    from medseg.io.dicom import discover_series, no_series_message, select_series  # looked up now: patchable

    path = Path(path)
    found = discover_series(path, progress=progress)
    names = series_case_names([s for s in found if s.is_volume], path)  # over all volumes: picking keeps a name
    if which is not None or single:
        s = select_series(found, which, path)
        return PickedSeries([s], [names.get(s.index) or _header_name(s)])
    volumes = [s for s in found if s.is_volume]
    if not volumes:
        if not found:
            raise InputError(no_series_message(path), path=path)
        raise InputError(f"no DICOM volume series found ({len(found)} non-volume image series: "
                         f"{found[0].problem})", path=path)
    notes = [f"medseg: note: {s.folder}: skipped series {s.label()}: {s.problem}" for s in found if not s.is_volume]
    return PickedSeries(volumes, [names[s.index] for s in volumes], notes)


def series_case_names(series: "list[SeriesInfo]", root: Path) -> dict[int, str]:
    """Output names of the DICOM series discovered under ``root`` (``SeriesInfo.index`` → name).

    A lone series is named after ``root`` as given (the folder, a symbolic link's own name, the file without suffix;
    the folder a DICOMDIR indexes), like an image file.
    Otherwise a series alone in its own folder below ``root`` is named after that folder's path relative to
    ``root`` (parts joined by ``_``), and series sharing a folder after ``<SeriesNumber>_<description>``
    (characters other than letters and digits replaced by ``_``). Names that still collide get the last six
    digits of their SeriesInstanceUID (then their index) appended. Names do not depend on which series are
    picked, so finished outputs are recognised whether the folder or one series was predicted.

    Examples
    --------
    >>> from types import SimpleNamespace as S
    >>> flat = [S(index=i, folder=Path("."), series_uid=f"1.2.{i}", description=d, modality="MR",
    ...           meta={"series_number": n}) for i, (d, n) in enumerate([("T2 reg / axial", 3), ("T1", 4)])]
    >>> series_case_names(flat, Path("."))
    {0: '3_T2_reg_axial', 1: '4_T1'}
    """
    from medseg.io.dicom_files import dicom_root

    root = dicom_root(Path(root))  # a DICOMDIR: its folder
    # paths as the user gave them (a symbolic link keeps its own name), made absolute with '.' and '..' removed
    # ('convert . out' inside a series folder: the folder's name)
    base = Path(os.path.abspath(root))
    if len(series) == 1:
        return {series[0].index: case_name(root) if root.is_file() else (base.name or "series")}
    per_folder = Counter(Path(os.path.abspath(s.folder)) for s in series)
    names = {}
    for s in series:
        folder = Path(os.path.abspath(s.folder))
        if per_folder[folder] == 1 and folder != base and folder.is_relative_to(base):
            names[s.index] = "_".join(folder.relative_to(base).parts)
        else:
            names[s.index] = _header_name(s)
    for extra in (lambda s: re.sub(r"\D", "", s.series_uid)[-6:], lambda s: str(s.index)):
        # T1 and t1 are one file on Windows and macOS: compare names as those systems do, keep their spelling
        counts = Counter(n.casefold() for n in names.values())
        for s in series:
            if counts[names[s.index].casefold()] > 1 and extra(s):
                names[s.index] += f"_{extra(s)}"
    return names


def _header_name(s: "SeriesInfo") -> str:
    """``<SeriesNumber>_<description>`` of a series, safe as a file name on every system."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", s.description or s.modality or "series").strip("_")[:60] or "series"
    num = s.meta.get("series_number")
    return f"{num}_{slug}" if isinstance(num, int) else slug
