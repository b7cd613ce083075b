"""A cohort's cases: the image files of a folder grouped into cases, or the DICOM series found under it, and the
checks that they can be read (and referenced by an export) before anything is written; :mod:`medseg.infer.cohort`
predicts them.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import case_name
from medseg.io.image import Image
from medseg.io.readers import is_dicom_file, read_image
from medseg.io.series_names import pick_series

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")

if TYPE_CHECKING:
    from medseg.io.dicom import SeriesInfo


@dataclass
class Case:
    """One case to predict.

    Attributes
    ----------
    name : str
        The case id: the output is ``<name>.nii.gz``.
    paths : list of Path
        Its image files (one per channel); for a DICOM series, the file or folder it was discovered in.
    series : SeriesInfo or None
        The DICOM series (from :func:`medseg.io.dicom.discover_series` on ``paths[0]``), else ``None``; its
        headers are released (:meth:`~medseg.io.dicom.SeriesInfo.release_headers`) and read again on loading.
    """

    name: str
    paths: list[Path]
    series: "SeriesInfo | None" = None


def list_cases(path: Path, channels: int = 1, series: str | int | None = None,
               notes: list[str] | None = None) -> list[Case]:
    """The cases under ``path``: a file, a folder of image files, or DICOM series.

    Parameters
    ----------
    path : Path
        An image file, a folder of image files, a DICOM file, or a folder holding DICOM series (one folder
        with the files of several series, or subfolders each holding series).
    channels : int
        The model's input channels. Files named ``<case>_0000``, ``<case>_0001``, ... form case ``<case>`` when
        their numbers are exactly the channels ``0000`` ... ``channels - 1`` (nnU-Net v2 names; with one channel,
        ``a_0000`` is case ``a``), stem by stem; otherwise each file is its own case named by its whole name (MSD
        ids such as ``patient_0001``; ``x_0000``, ``x_0001``, ``x_0002`` for a one-channel model). The rule is
        :func:`medseg.train.dataset.group_case_files`'s; a lone ``patient_0000`` with one channel is ambiguous,
        and is case ``patient`` (the nnU-Net convention wins).
    series : str or int, optional
        Only this DICOM series (index or SeriesInstanceUID, picked by :func:`medseg.io.dicom.select_series`).
        A folder that also holds image files is then searched for DICOM series, not listed as images.
    notes : list of str, optional
        Receives the notes on skipped DICOM series (see :func:`dicom_cases`) instead of stderr.

    Returns
    -------
    list of Case
        Image files in name order; DICOM series in discovery order, named by :func:`series_case_names`. A broken
        link, given or among the image files of the folder, is an ``InputError`` naming it.

    Examples
    --------
    Only file names are read:

    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz"):
    ...     (folder / name).touch()
    >>> [(case.name, [p.name for p in case.paths]) for case in list_cases(folder, channels=2)]
    [('a', ['a_0000.nii.gz', 'a_0001.nii.gz']), ('b', ['b_0000.nii.gz', 'b_0001.nii.gz'])]
    >>> [case.name for case in list_cases(folder, channels=1)]  # not channels 0000 only: one case per file
    ['a_0000', 'a_0001', 'b_0000', 'b_0001']
    """
    from medseg.io.readers import image_files
    from medseg.train.dataset import group_case_files

    if path.is_symlink() and not path.exists():
        raise InputError(f"broken link: target {os.readlink(path)} does not exist", path=path)
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    if path.is_file():
        if series is None:
            return [Case(case_name(path), [path])]
        if not is_dicom_file(path):
            raise InputError("--series picks a DICOM series, but this is not a DICOM file", path=path)
        return dicom_cases(path, series, notes)
    files = image_files(path, IMAGE_SUFFIXES)  # a broken link among them is an InputError naming it
    if not files or series is not None:
        return dicom_cases(path, series, notes)
    return [Case(name, paths) for name, paths in sorted(group_case_files(files, channels).items())]


def dicom_cases(path: Path, series: str | int | None = None, notes: list[str] | None = None) -> list[Case]:
    """One case per DICOM volume series under ``path``, or only the one ``series`` picks.

    Series are picked and named as ``medseg convert`` does (:func:`medseg.io.series_names.pick_series`). Images
    that can never be volumes (screenshots, colour, cine) are skipped with a note: appended to ``notes`` when
    given (a caller that still validates prints them once that passed), else printed on stderr. A picked series
    that is not a volume is an ``InputError``. ``path``, ``series`` and ``notes`` are as in :func:`list_cases`.

    Returns
    -------
    list of Case
        In discovery order, each with its ``series``.
    """
    picked = pick_series(path, series)
    for s in picked.series:
        if not s.is_volume:  # only a picked one: listing takes volumes only
            raise InputError(f"series {s.label()} cannot be predicted: {s.problem}", path=s.folder)
        s.release_headers()  # a cohort keeps every case's series until it ends: ~60 kB per slice less
    if notes is not None:
        notes.extend(picked.notes)
    else:  # said once, on stderr, without stopping the cohort
        for line in picked.notes:
            print(line, file=sys.stderr)
    return [Case(name, [path], s) for s, name in zip(picked.series, picked.names)]


def read_case(paths: list[Path]) -> Image:
    """One case as an ``Image`` (channels first when several files or a 4D file).

    Parameters
    ----------
    paths : list of Path
        The case's files, one per channel, all on one grid (else an ``InputError``).

    Returns
    -------
    Image
        A single file as :func:`medseg.io.readers.read_image` reads it; several stacked as float32 (float64 when
        one is).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from medseg.io.image import Image
    >>> from medseg.io.writers import write_image
    >>> folder = Path(tempfile.mkdtemp())
    >>> paths = [folder / "a_0000.nii.gz", folder / "a_0001.nii.gz"]  # two channels on one 4 x 4 x 3 grid
    >>> for p in paths:
    ...     _ = write_image(Image(np.zeros((4, 4, 3), np.int16), np.diag([2.0, 1.0, 1.0, 1.0])), p)
    >>> image = read_case(paths)
    >>> image.array.shape, image.array.dtype, image.channels_first, image.spacing
    ((2, 4, 4, 3), dtype('float32'), True, (2.0, 1.0, 1.0))
    >>> read_case(paths[:1]).array.dtype.name  # one file: as stored
    'int16'
    """
    images = [read_image(p) for p in paths]
    if len(images) == 1:
        return images[0]
    ref = images[0]
    for p, im in zip(paths[1:], images[1:]):
        if not ref.same_grid(im):
            raise InputError(f"channel file is not on the grid of {paths[0].name}", path=p)
    # float64 files stay float64 (values beyond float32's range are finite, and normalised in float64)
    arr = np.stack([np.asarray(im.array, np.float64 if im.array.dtype == np.float64 else np.float32) for im in images])
    return Image(arr, ref.affine, {**ref.meta, "source": str(paths[0])}, True)


def case_image(case: Case) -> Image:
    """The case's image: its files (:func:`read_case`) or its DICOM series."""
    if case.series is None:
        return read_case(case.paths)
    from medseg.io.dicom import load_series

    return load_series(case.series)


def check_series(cases: list[Case]) -> None:
    """``InputError`` naming the first series that cannot load as a volume, before anything is written."""
    from medseg.io.dicom import load_series

    for c in cases:
        if c.series is not None and c.series.tilt_degrees and not c.series.problem:
            # load_series's advice (--allow-tilt) is convert's: predict writes on the series' own grid
            raise InputError(f"series {c.series.label()} has a gantry tilt of {c.series.tilt_degrees:.2f} degrees, "
                             "and a label map cannot lie on its grid: resample it onto an orthogonal grid with "
                             "`medseg convert --allow-tilt` and predict that file (`medseg export` puts the prediction back "
                             "onto the series)", path=c.series.folder)
        if c.series is not None and c.series.problem:
            load_series(c.series)  # raises with the series and the reason, without reading pixels


def check_references(cases: list[Case], export: str) -> None:
    """``InputError`` naming the first series that ``--export`` could not reference (missing UIDs, multi-frame),
    before anything is predicted; its headers are read here and again when it is exported."""
    from medseg.export.reference import load_reference

    for c in cases:
        try:
            load_reference(c.paths[0], c.series)
        except InputError as exc:
            raise InputError(f"--export {export}: series {c.series.label()}: {exc.problem}",
                             path=c.series.folder) from None
