"""The DICOM series a segmentation refers to: its instances, identifiers and exact slice geometry.

DICOM-SEG and RTSTRUCT must point at real instances of one series in one frame of reference, so a
reference is checked strictly before anything is written: every identifier a viewer resolves the
segmentation by (SOP Class/Instance, Study, Series, Frame of Reference UIDs) must be present and
non-empty, and the slices must share one orientation and pixel grid.

Geometry is kept per slice (each slice's own Image Position (Patient)), so series with gantry tilt
or uneven slice spacing are placed exactly; ``grid_affine`` is the regular-grid approximation used
only to describe the label map written for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.image import LPS_TO_RAS, Image

#: identifiers a DICOM-SEG / RTSTRUCT needs from every reference instance
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


@dataclass
class ReferenceSeries:
    """One DICOM image series in slice order, with its per-slice geometry (LPS, mm).

    Attributes
    ----------
    datasets : list of pydicom.Dataset
        Headers (no pixel data) in slice order (increasing position along the slice normal).
    files : list of Path
        The files, in the same order.
    row_dir, col_dir : ndarray, shape (3,)
        LPS unit vectors of increasing column index (along a row) and increasing row index.
    spacing_rc : (float, float)
        Pixel spacing between rows and between columns (DICOM PixelSpacing order).
    positions : ndarray, shape (n, 3)
        LPS Image Position (Patient) of each slice.

    Examples
    --------
    Normally made by :func:`load_reference`; the geometry needs no pixel data:

    >>> from pydicom import Dataset
    >>> ref = ReferenceSeries(Path("ct"), [Dataset() for _ in range(3)], [], 4, 5, np.array([1.0, 0, 0]),
    ...                       np.array([0.0, 1, 0]), (0.5, 0.8), np.array([[0.0, 0, 0], [0, 0, 2], [0, 0, 4]]))
    >>> ref.shape, ref.is_regular()  # (columns, rows, slices)
    ((5, 4, 3), True)
    >>> ref.grid_affine().diagonal().tolist()  # RAS: LPS x and y negated; columns 0.8 mm apart
    [-0.8, -0.5, 2.0, 1.0]
    """

    path: Path
    datasets: list
    files: list[Path]
    rows: int
    columns: int
    row_dir: np.ndarray
    col_dir: np.ndarray
    spacing_rc: tuple[float, float]
    positions: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape in medseg's ``[i, j, k]`` = (columns, rows, slices) order."""
        return (self.columns, self.rows, len(self.datasets))

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.datasets[0].FrameOfReferenceUID)

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    def slice_lps(self, k: int) -> np.ndarray:
        """4x4 matrix mapping ``(i, j, 0, 1)`` of slice ``k`` to LPS world (i = column, j = row)."""
        m = np.eye(4)
        m[:3, 0] = self.row_dir * self.spacing_rc[1]
        m[:3, 1] = self.col_dir * self.spacing_rc[0]
        m[:3, 2] = self.normal
        m[:3, 3] = self.positions[k]
        return m

    def grid_affine(self) -> np.ndarray:
        """RAS affine of the regular grid through the first slice (mean slice step along the normal)."""
        m = self.slice_lps(0)
        if len(self.positions) > 1:
            m[:3, 2] = (self.positions[-1] - self.positions[0]) / (len(self.positions) - 1)
        else:
            thick = float(self.datasets[0].get("SliceThickness") or 1.0)
            m[:3, 2] = self.normal * thick
        return LPS_TO_RAS @ m

    def untilted_affine(self) -> np.ndarray:
        """RAS affine of the orthogonal grid through the first slice, its slices one mean step apart along the
        normal: the grid ``medseg convert --allow-tilt`` resamples a gantry-tilted series onto (equal to
        :meth:`grid_affine` for a series without tilt)."""
        m = self.slice_lps(0)
        if len(self.positions) > 1:
            step = (self.positions[-1] - self.positions[0]) / (len(self.positions) - 1)
            m[:3, 2] = self.normal * float(step @ self.normal)
        else:
            m[:3, 2] = self.normal * float(self.datasets[0].get("SliceThickness") or 1.0)
        return LPS_TO_RAS @ m

    def is_regular(self, tol_mm: float = 0.01) -> bool:
        """True when every slice lies on the regular grid of ``grid_affine`` (no tilt, even spacing).

        A gantry tilt (each slice shifted in-plane by the same step) puts the slices on a regular but
        sheared grid: not regular here, as no orthogonal grid holds it (NIfTI's qform cannot).
        """
        aff_lps = LPS_TO_RAS @ self.grid_affine()
        k = np.arange(len(self.positions))[:, None]
        expected = aff_lps[:3, 3][None] + k * aff_lps[:3, 2][None]
        if np.abs(expected - self.positions).max() > tol_mm:
            return False
        step = aff_lps[:3, 2]
        drift = step - float(step @ self.normal) * self.normal  # in-plane shift per slice
        return bool(np.linalg.norm(drift) * max(len(self.positions) - 1, 1) <= tol_mm)

    def empty_image(self, dtype=np.uint8) -> Image:
        """A zero label map on this series' grid, carrying the series identifiers in ``meta``."""
        return Image(np.zeros(self.shape, dtype), self.grid_affine(), dict(self.meta))


def _read_headers(files: list[Path]) -> list[tuple[Path, object]]:
    import pydicom

    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception:  # not DICOM (README, DICOMDIR junk...): not part of any series
            continue
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds and "Rows" in ds:
            out.append((Path(f), ds))
    return out


def _series_files(path: Path, series) -> list[Path]:
    """Files of the chosen series, picked with medseg.io's discovery (same indices as ``medseg info``), or of a
    series a caller has already discovered (a ``SeriesInfo``: no second scan of the folder)."""
    from medseg.io.dicom import SeriesInfo, discover_series, select_series

    info = series if isinstance(series, SeriesInfo) else select_series(discover_series(path), series, path)
    return list(dict.fromkeys(info.files))  # an enhanced multi-frame file is listed once per frame


def _require_dicom_file(path: Path) -> None:
    """A file given as the reference must be DICOM; discovery's advice for a stray file in a folder
    ("remove it from the folder") does not apply to it."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except InvalidDicomError:
        raise InputError("not a DICOM file (no DICM preamble); --reference takes the DICOM series folder",
                         path=path) from None
    except Exception:  # unreadable or damaged: discovery reports it in its own words
        pass


def load_reference(path: str | os.PathLike, series: str | int | None = None) -> ReferenceSeries:
    """Read and check the DICOM series a segmentation will reference.

    Parameters
    ----------
    path : path
        A folder holding the series (other series and non-image objects may be there too) or one file.
    series : str, int or SeriesInfo, optional
        SeriesInstanceUID or index, required when ``path`` holds several series; or the series as
        :func:`medseg.io.dicom.discover_series` found it under ``path``.

    Raises
    ------
    InputError
        When the series cannot be referenced correctly: missing or empty UIDs (named), mixed series,
        inconsistent orientation or pixel grid, duplicate slice positions.

    Returns
    -------
    ReferenceSeries
        The series' headers (no pixel data) and files in slice order, with its per-slice geometry.

    Examples
    --------
    Three slices made from pydicom's example CT (128 x 128 pixels), each file 5 mm below the one before:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from pydicom import examples
    >>> from pydicom.uid import generate_uid
    >>> folder, series = Path(tempfile.mkdtemp()), generate_uid()
    >>> for k in range(3):
    ...     ds = examples.ct
    ...     ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ...     ds.SeriesInstanceUID = series
    ...     ds.ImagePositionPatient[2] -= 5 * k
    ...     ds.save_as(folder / f"{k}.dcm")
    >>> ref = load_reference(folder)
    >>> ref.shape, ref.is_regular(), [f.name for f in ref.files]  # (columns, rows, slices), in slice order
    ((128, 128, 3), True, ['2.dcm', '1.dcm', '0.dcm'])
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such reference series folder", path=path)
    if path.is_file():
        _require_dicom_file(path)
    headers = _read_headers(_series_files(path, series))
    if not headers:
        raise InputError("no DICOM image series found", path=path)
    datasets = [ds for _, ds in headers]
    missing = [k for k in REQUIRED_UIDS if any(not str(ds.get(k, "") or "").strip() for ds in datasets)]
    if missing:
        raise InputError(f"reference series cannot be referenced: {', '.join(missing)} missing or empty "
                         f"(a segmentation must point at real instances)", path=path)
    for key in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
        if len({str(ds[key].value) for ds in datasets}) > 1:
            raise InputError(f"the reference files mix several {key}s; pass one series", path=path)
    if len({str(ds.SOPInstanceUID) for ds in datasets}) != len(datasets):
        raise InputError("duplicate SOPInstanceUIDs in the reference series", path=path)
    if any("NumberOfFrames" in ds and int(ds.NumberOfFrames) > 1 for ds in datasets):
        raise InputError("multi-frame reference images are not supported; use a single-frame series", path=path)
    iop = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
    if np.abs(iop - iop[0]).max() > 1e-4:
        raise InputError("slices have different orientations (not one volume)", path=path)
    grid = {(int(ds.Rows), int(ds.Columns), tuple(round(float(v), 6) for v in ds.PixelSpacing)) for ds in datasets}
    if len(grid) > 1:
        raise InputError("slices have different sizes or pixel spacings (not one volume)", path=path)
    row_dir, col_dir = iop[0, :3], iop[0, 3:]
    row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    pos = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    order = np.argsort(pos @ normal, kind="stable")
    pos = pos[order]
    if len(pos) > 1 and np.min(np.diff(pos @ normal)) < 1e-3:
        raise InputError("two slices share one position (duplicate or mixed acquisitions)", path=path)
    datasets = [datasets[i] for i in order]
    files = [headers[i][0] for i in order]
    rows, cols, spacing = grid.pop()
    ds0 = datasets[0]
    meta = {
        "source": str(path), "modality": str(ds0.get("Modality", "")), "series_uid": str(ds0.SeriesInstanceUID),
        "study_uid": str(ds0.StudyInstanceUID), "frame_of_reference_uid": str(ds0.FrameOfReferenceUID),
        "series_description": str(ds0.get("SeriesDescription", "")),
        "sop_instance_uids": [str(ds.SOPInstanceUID) for ds in datasets], "files": [str(f) for f in files],
    }
    return ReferenceSeries(path, datasets, files, rows, cols, row_dir, col_dir, (float(spacing[0]), float(spacing[1])),
                           pos, meta)

