"""``read_image``: one entry point for every supported format (writing: :mod:`medseg.io.writers`).

NIfTI through nibabel (with ITK's choice between sform and qform where they disagree, see
:func:`nifti_affine`), NRRD/MHA/MHD through SimpleITK, TIFF/PNG through
``medseg.io.microscopy``, DICOM (folders, single files, enhanced multi-frame) through
``medseg.io.dicom``.
"""

from __future__ import annotations

import gzip
import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import full_suffix
from medseg.io.image import Image

NIFTI = (".nii", ".nii.gz")
ITK = (".nrrd", ".seg.nrrd", ".nhdr", ".mha", ".mhd")
MICROSCOPY = (".tif", ".tiff", ".png")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", "")
WRITABLE = (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha") + MICROSCOPY
#: SimpleITK ImageIO of each ITK suffix (lower case, as ``full_suffix`` gives it)
_ITK_IO = {".nrrd": "NrrdImageIO", ".seg.nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO", ".mha": "MetaImageIO",
           ".mhd": "MetaImageIO"}


def image_files(folder: Path, suffixes) -> list[Path]:
    """The files of ``folder`` (not recursive) whose format suffix is one of ``suffixes``, in name order; hidden
    files and folders are left out, a broken link is an ``InputError`` naming it (it would be a case gone
    missing without a word).

    Examples
    --------
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = [(d / name).touch() for name in ("b.nii.gz", "a.nii.gz", ".c.nii.gz", "notes.txt")]
    >>> [p.name for p in image_files(d, NIFTI)]
    ['a.nii.gz', 'b.nii.gz']
    """
    found = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or full_suffix(p) not in suffixes:
            continue
        if p.is_symlink() and not p.exists():
            raise InputError(f"broken link: target {os.readlink(p)} does not exist", path=p)
        if p.is_file():
            found.append(p)
    return found


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file carries the DICOM Part 10 preamble (``DICM`` at byte 128); False if it cannot be read.

    Examples
    --------
    >>> p = Path(tempfile.mkdtemp()) / "IM1"
    >>> _ = p.write_bytes(bytes(128) + b"DICM")
    >>> is_dicom_file(p), is_dicom_file(p.with_name("missing"))
    (True, False)
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def nifti_affine(header) -> tuple[np.ndarray, str]:
    """The index-to-RAS affine of a NIfTI header, and which field it came from.

    nibabel and ITK agree whenever sform and qform agree or only one is set (every NIfTI in the
    sample data). Where both are set and disagree they differ: nibabel takes the sform whatever
    its code, ITK the sform only when its code is SCANNER_ANAT (1) and it is a rotation+scale
    (no shear), else the qform. medseg follows ITK there, because DICOM tools (ITK, Slicer, dcmqi)
    read the scanner frame that way and medseg's geometry contract is "equal to SimpleITK".

    Two headers keep nibabel's (the standard's) reading, where ITK's differs: a sform whose column
    lengths are not ``pixdim`` (ITK takes the spacing from ``pixdim``, warning "unexpected scales in
    sform"), and neither code set (ITK: LPS axes from the origin; nibabel: x flipped, centred).

    Returns
    -------
    affine : (4, 4) ndarray
    source : str
        ``'sform'``, ``'qform'``, or ``'sform (qform disagrees)'`` / ``'qform (sform disagrees)'``.

    Examples
    --------
    >>> import nibabel as nib
    >>> h = nib.Nifti1Header(); h.set_sform(np.diag([2.0, 2.0, 3.0, 1.0]), code=1)  # no qform
    >>> nifti_affine(h)[0].diagonal().tolist(), nifti_affine(h)[1]
    ([2.0, 2.0, 3.0, 1.0], 'sform')
    """
    s_code, q_code = int(header["sform_code"]), int(header["qform_code"])
    sform, qform = header.get_sform(), header.get_qform()
    if s_code > 0 and q_code > 0:
        if np.allclose(sform, qform, atol=1e-4, rtol=1e-5):
            return sform, "sform"
        m = sform[:3, :3]
        gram = m.T @ m
        no_shear = np.allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-4 * float(np.max(np.abs(gram))))
        if s_code == 1 and no_shear:
            return sform, "sform (qform disagrees)"
        return qform, "qform (sform disagrees)"
    if s_code > 0:
        return sform, "sform"
    if q_code > 0:
        return qform, "qform"
    return header.get_best_affine(), "none (no sform/qform: nibabel's default)"


#: mm per NIfTI spatial unit code (1 meter, 3 micron); mm (2) and unknown or unused codes: 1
_NIFTI_MM = {1: 1e3, 3: 1e-3}


def nifti_mm_per_unit(header) -> float:
    """Millimetres per unit of a NIfTI header's spatial unit, read as ITK reads it.

    Only the low 3 bits of ``xyzt_units`` are the spatial unit (the next 3 the temporal one): other bits set, or a
    code no standard names, mean millimetres, where ``nibabel``'s ``get_xyzt_units`` raises ``KeyError``.

    Examples
    --------
    >>> import nibabel as nib
    >>> h = nib.Nifti1Header()
    >>> h["xyzt_units"] = 3 | 8  # micron, second
    >>> nifti_mm_per_unit(h)
    0.001
    >>> h["xyzt_units"] = 2 | 64  # mm, and a bit no standard uses
    >>> nifti_mm_per_unit(h)
    1.0
    """
    return _NIFTI_MM.get(int(header["xyzt_units"]) & 0x07, 1.0)


def _read_nifti(path: Path) -> Image:
    import nibabel as nib

    from medseg.io.limits import check_nifti_claim

    def to_image(nimg) -> tuple[Image, np.ndarray]:
        check_nifti_claim(nimg, path, compressed=str(path).lower().endswith(".gz"))  # before the voxels
        affine, source = nifti_affine(nimg.header)
        # in mm, as ITK reads it (nibabel ignores xyzt_units: a micron file would be 1000 times too large)
        affine = np.diag([*[nifti_mm_per_unit(nimg.header)] * 3, 1.0]) @ affine
        # kept so that outputs on this grid say what the input said (1 scanner, 2 aligned, 3 Talairach, 4 MNI)
        codes = {"sform": int(nimg.header["sform_code"]), "qform": int(nimg.header["qform_code"]),
                 **({"version": 2} if isinstance(nimg, nib.Nifti2Image) else {})}  # float64 geometry
        return Image.from_nibabel(nimg, meta={"source": str(path), "format": "nifti", "affine_source": source,
                                              "nifti_codes": codes}), affine

    try:
        if str(path).lower().endswith(".gz"):
            # through our own handle, read to its end: only there does gzip check its CRC and length (nibabel
            # stops after the voxels, so a flipped byte or appended junk went unnoticed)
            with gzip.open(path, "rb") as fh:
                size = fh.read(4)
                fh.seek(0)
                klass = nib.Nifti2Image if size in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") else nib.Nifti1Image
                holder = nib.FileHolder(fileobj=fh)
                img, affine = to_image(klass.from_file_map({"image": holder, "header": holder}))
                while fh.read(16 << 20):
                    pass
        else:
            img, affine = to_image(nib.load(str(path)))
    except InputError:
        raise
    except Exception as exc:  # nibabel raises many types for corrupt or truncated files
        raise InputError(f"cannot read NIfTI ({type(exc).__name__}: {exc})", path=path) from None
    # singular relative to the voxel size: an absolute 1e-12 refused every 1e-4 mm voxel (microscopy in mm)
    m = np.asarray(affine, float)[:3, :3]
    if not np.all(np.isfinite(affine)) or not abs(np.linalg.det(m)) > 1e-12 * np.prod(np.linalg.norm(m, axis=0)):
        raise InputError("NIfTI affine is singular or not finite", path=path)
    img.affine = np.asarray(affine, dtype=float)
    return img


# File descriptor 2 belongs to the process: two threads swapping it at once (a thread data loader reading MHA files)
# would each restore the other's temporary file and lose stderr for good, so one capture at a time.
_STDERR_LOCK = threading.Lock()


def _capture_file():
    """A file for :func:`_native_stderr`: a temporary file, or where no temporary folder can be written (a read-only
    container; TMPDIR, /tmp and the working folder all read-only) one in memory (Linux), else None."""
    try:
        return tempfile.TemporaryFile()
    except OSError:
        pass
    try:
        return os.fdopen(os.memfd_create("medseg-stderr"), "w+b")
    except (AttributeError, OSError):
        return None


@contextmanager
def _native_stderr(captured: list[str]):
    """Collect what C/C++ code writes to file descriptor 2 while the block runs.

    ITK's MetaIO reports a cut-short file on ``std::cerr`` and then throws an exception whose reason is a
    stale errno ("No such file or directory"): the real reason is in those lines, and left on the terminal
    they would break the one-line error.
    """
    with _STDERR_LOCK:
        if sys.stderr is not None:
            sys.stderr.flush()
        tmp = _capture_file()
        if tmp is None:  # nowhere to capture it: read uncaptured rather than refuse the file
            captured.append("")
            yield
            return
        try:
            saved = os.dup(2)
        except OSError:  # no descriptor 2 (a daemon): nothing to keep clean
            tmp.close()
            captured.append("")
            yield
            return
        with tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                captured.append(tmp.read().decode(errors="replace"))


def _itk_reason(exc: Exception, native: str) -> str:
    """The reason for a failed ITK read: MetaIO's own words where it printed any (see ``_native_stderr``)."""
    short = re.search(r"ideal\s*=\s*(\d+)\s*:\s*actual\s*=\s*(\d+)", native)
    if "not read completely" in native and short:
        return f"truncated: the pixel data holds {short[2]} of the {short[1]} bytes the header declares"
    printed = " ".join(ln.strip() for ln in native.splitlines() if ln.strip())
    if printed:
        return printed
    # ITK's own words after "ITK ERROR: Class(0x...):", on one line: they may span lines (a singular direction matrix
    # ends the message), and the last line alone said only "0 0 1"
    thrown = re.search(r"ITK ERROR: [^:]*: (.*)", str(exc), re.S)
    if thrown:
        return " ".join(thrown[1].split())
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


def _read_itk(path: Path, suffix: str) -> Image:
    import SimpleITK as sitk

    from medseg.io.limits import check_data_files, check_itk_claim

    check_data_files(path)
    native: list[str] = []
    try:
        with _native_stderr(native):
            # the ImageIO named from the lower-cased suffix: ITK picks one by the name's case ('H.MHA' had none)
            reader = sitk.ImageFileReader()
            reader.SetImageIO(_ITK_IO[suffix])
            reader.SetFileName(str(path))
            check_itk_claim(reader, path)  # ITK allocates what the header says before it reads
            simg = reader.Execute()
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read image ({_itk_reason(exc, ''.join(native))})", path=path) from None
    if native[0].strip() and sys.stderr is not None:  # a successful read's warnings stay visible, as uncaptured
        sys.stderr.write(native[0])
    try:
        return Image.from_sitk(simg, meta={"source": str(path), "format": suffix.lstrip(".")})
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read image ({type(exc).__name__}: {exc})", path=path) from None


def _read_dicom(path: Path, series, allow_tilt: bool) -> Image:
    from medseg.io.dicom import load_series

    return load_series(path, series=series, allow_tilt=allow_tilt)


def read_image(path: str | os.PathLike, series: str | int | None = None, *, allow_tilt: bool = False,
               spatial_dims: int | None = None) -> Image:
    """Read a file (NIfTI, NRRD, MHA/MHD, TIFF, PNG, DICOM) or a DICOM folder into an ``Image``.

    Parameters
    ----------
    path : path
        File or DICOM folder.
    series : int or str, optional
        DICOM series (index or SeriesInstanceUID) when a folder holds several.
    allow_tilt : bool
        Resample gantry-tilted DICOM series instead of refusing them.
    spatial_dims : int, optional
        Refuse (``InputError``) anything that is not a single-channel image with this many
        spatial dimensions (``3`` where a volume is expected).

    Examples
    --------
    >>> read_image("missing.nii.gz")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    medseg.errors.InputError: missing.nii.gz: no such file or folder
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    suffix = full_suffix(path)
    if path.is_file() and path.stat().st_size == 0:
        raise InputError("empty file", path=path)
    if path.is_dir():
        img = _read_dicom(path, series, allow_tilt)
    elif suffix in NIFTI:
        img = _read_nifti(path)
    elif suffix in ITK:
        img = _read_itk(path, suffix)
    elif suffix in MICROSCOPY:
        from medseg.io.microscopy import read_microscopy

        img = read_microscopy(path)
    elif is_dicom_file(path):
        img = _read_dicom(path, series, allow_tilt)
    elif suffix in DICOM_SUFFIXES:
        raise InputError("not a DICOM file (no DICM preamble)", path=path)
    else:
        raise InputError(f"unsupported format '{suffix}' (NIfTI, NRRD, MHA/MHD, TIFF, PNG or DICOM)", path=path)
    check_voxels(img, path)
    if spatial_dims is not None:
        check_dims(img, spatial_dims, path)
    return img


def check_voxels(img: Image, path) -> None:
    """``InputError`` for an image with no voxels or with voxels that are not one real number each (complex,
    RGB records): converting them would silently drop a part.

    Examples
    --------
    >>> check_voxels(Image(np.zeros((2, 2), complex), np.eye(4)), "a.nii")
    Traceback (most recent call last):
    medseg.errors.InputError: a.nii: complex voxels (complex128) are not supported: ...
    """
    dt = img.array.dtype
    if img.array.size == 0:
        raise InputError(f"empty image (shape {tuple(img.array.shape)})", path=path)
    if dt.kind == "c":
        raise InputError(f"complex voxels ({dt}) are not supported: convert to magnitude or real part first",
                         path=path)
    if dt.names or dt.kind not in "biuf":
        raise InputError(f"unsupported voxel type {dt} (one number per voxel expected, e.g. not RGB)", path=path)


def check_finite(image, path=None):
    """Refuse an image (``Image`` or array) with NaN or infinite values: a network's output, percentiles and
    thresholds would all be NaN. Returns the image.

    Examples
    --------
    >>> check_finite(np.array([[np.nan, 1.0, np.inf]]), "a.tif")
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: a.tif: image has 2 NaN or infinite pixels
    """
    arr = image.array if isinstance(image, Image) else np.asarray(image)
    if arr.dtype.kind in "fc":  # integers cannot hold them
        flat = arr.ravel(order="K")  # a view in memory order (NIfTI arrays are Fortran-ordered)
        step, bad = 1 << 24, 0  # in slabs: one mask of a large CT would add a quarter of its float32 size to the peak
        for i in range(0, flat.size, step):
            part = flat[i:i + step]
            bad += part.size - int(np.count_nonzero(np.isfinite(part)))
        if bad:
            ndim = image.ndim if isinstance(image, Image) else arr.ndim
            raise InputError(f"image has {bad} NaN or infinite {'pixels' if ndim == 2 else 'voxels'}", path=path)
    return image


def check_dims(img: Image, spatial_dims: int, path) -> None:
    """``InputError`` unless ``img`` is single-channel with ``spatial_dims`` spatial axes.

    Examples
    --------
    >>> check_dims(Image(np.zeros((4, 5)), np.eye(4)), 3, "a.png")
    Traceback (most recent call last):
    medseg.errors.InputError: a.png: expected a 3D image, got 2D (shape (4, 5))
    """
    if img.channels_first and img.num_channels > 1:
        raise InputError(f"expected a {spatial_dims}D image, got {img.ndim}D with {img.num_channels} "
                         f"channels/time points (shape {tuple(img.array.shape)})", path=path)
    if img.ndim != spatial_dims:
        raise InputError(f"expected a {spatial_dims}D image, got {img.ndim}D (shape {img.shape})", path=path)


def read_volume(path: str | os.PathLike, series: str | int | None = None, *, allow_tilt: bool = False) -> Image:
    """``read_image`` that accepts only single-channel 3D images (what segmentation needs).

    Examples
    --------
    >>> from medseg.io.writers import write_image
    >>> p = write_image(Image(np.zeros((4, 5), np.uint8), np.eye(4)), Path(tempfile.mkdtemp()) / "slice.nii.gz")
    >>> read_volume(p)
    Traceback (most recent call last):
    medseg.errors.InputError: ...slice.nii.gz: expected a 3D image, got 2D (shape (4, 5))
    """
    return read_image(path, series, allow_tilt=allow_tilt, spatial_dims=3)


_MOVED = {"write_image", "write_unchecked", "storable", "label_dtype"}  # to medseg.io.writers; old imports still work


def __getattr__(name: str):
    if name in _MOVED:
        from medseg.io import writers

        return getattr(writers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
