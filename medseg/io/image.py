"""The one image type of medseg: an array plus the geometry that places it in the patient.

Convention (the same as NIfTI, nibabel and MONAI):

* ``array`` is indexed ``[i, j, k]`` (``[i, j]`` in 2D), optionally with a leading channel axis
  (``channels_first=True``). This is the *transpose* of SimpleITK's ``GetArrayFromImage`` order.
* ``affine`` is a 4x4 matrix mapping ``(i, j, k, 1)`` to **RAS** world coordinates in mm.
  DICOM/ITK use LPS: the conversion happens only at those boundaries (``from_sitk``/``to_sitk``
  and the DICOM reader), by negating the first two world axes.
* 2D images keep a 4x4 affine whose third column is ``(0, 0, 1)``.

Microscopy images have no patient frame; their affine is ``diag(spacing)`` in file axis order
(``(z, y, x)`` or ``(y, x)``) and ``orientation`` is meaningless for them.
"""

from __future__ import annotations

import itertools

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def affine_from_geometry(spacing, origin, direction) -> np.ndarray:
    """Build a 4x4 index-to-world affine from spacing, origin and a direction matrix.

    All three in the same world frame; ``direction`` columns are the unit vectors of the index axes.

    Examples
    --------
    >>> affine_from_geometry([2, 2, 3], [10, 20, 30], np.eye(3))[:3, 3]
    array([10., 20., 30.])
    """
    spacing = np.asarray(spacing, dtype=float)
    n = spacing.size
    direction = np.asarray(direction, dtype=float).reshape(n, n)
    aff = np.eye(4)
    aff[:n, :n] = direction * spacing[None, :]
    aff[:n, 3] = np.asarray(origin, dtype=float)[:n]
    return aff


@dataclass
class Image:
    """Array + RAS affine + metadata.

    Parameters
    ----------
    array : ndarray
        Voxel values, indexed ``[i, j, k]`` (channel axis first if ``channels_first``).
    affine : ndarray, shape (4, 4)
        Index to RAS world (mm).
    meta : dict
        Source metadata (``source`` path, ``modality``, ``series_uid``, ``series_description``, ...).
    channels_first : bool
        Whether ``array`` has a leading channel axis.

    Examples
    --------
    >>> img = Image(np.zeros((4, 5, 6), np.int16), np.diag([2.0, 2.0, 3.0, 1.0]))
    >>> img.spacing, img.shape, img.orientation
    ((2.0, 2.0, 3.0), (4, 5, 6), 'RAS')
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    channels_first: bool = False

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=float).reshape(4, 4)

    # --- geometry -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape (without the channel axis)."""
        return tuple(self.array.shape[1:] if self.channels_first else self.array.shape)

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return len(self.shape)

    @property
    def num_channels(self) -> int:
        return int(self.array.shape[0]) if self.channels_first else 1

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each index axis."""
        norms = np.linalg.norm(self.affine[:3, : self.ndim], axis=0)
        return tuple(float(s) for s in norms)

    @property
    def origin(self) -> tuple[float, float, float]:
        """World (RAS) position of voxel (0, 0, 0)."""
        return tuple(float(v) for v in self.affine[:3, 3])

    @property
    def direction(self) -> np.ndarray:
        """3x3 (RAS) matrix whose columns are the unit vectors of the index axes."""
        m = self.affine[:3, :3].copy()
        norms = np.linalg.norm(m, axis=0)
        norms[norms == 0] = 1.0
        return m / norms

    @property
    def origin_lps(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in (LPS_TO_RAS @ self.affine)[:3, 3])

    @property
    def direction_lps(self) -> np.ndarray:
        return (LPS_TO_RAS[:3, :3] @ self.direction)

    @property
    def orientation(self) -> str:
        """Axis code such as ``'RAS'`` or ``'LPS'``: the world direction each index axis points to."""
        import nibabel as nib

        return "".join(nib.aff2axcodes(self.affine))[: self.ndim]

    @property
    def voxel_volume_mm3(self) -> float:
        """One voxel's volume (mm³; a 2D image's pixel area in mm²): |det| of the index columns, which is the
        product of the spacings only when the axes are at right angles (a sheared grid's voxels are smaller, by
        cos 20° = 0.94 at a 20 degree gantry tilt).

        Examples
        --------
        >>> tilt = np.eye(4); tilt[1, 2], tilt[2, 2] = np.sin(np.radians(30)), np.cos(np.radians(30))
        >>> round(Image(np.zeros((2, 2, 2)), tilt).voxel_volume_mm3, 6)
        0.866025
        """
        m = self.affine[:3, : self.ndim]
        return float(np.sqrt(abs(np.linalg.det(m.T @ m))))  # the volume (area) the index columns span

    @property
    def voxel_volume_ml(self) -> float:
        return self.voxel_volume_mm3 / 1000.0

    def with_array(self, array: np.ndarray, channels_first: bool | None = None, **meta: Any) -> "Image":
        """A new image on the same grid (shape must match) with other voxel values."""
        cf = self.channels_first if channels_first is None else channels_first
        new = Image(array, self.affine.copy(), {**self.meta, **meta}, cf)
        if new.shape != self.shape:
            raise ValueError(f"shape {new.shape} does not match the grid {self.shape}")
        return new

    def grid_offset_mm(self, other: "Image") -> float:
        """Largest distance (mm) between the world positions the two affines give one voxel index of this grid.

        The map is affine, so the largest offset is at a corner. Only the index axes' columns and the origin count
        (a 2D NIfTI's unused third column is not part of the grid).

        Examples
        --------
        >>> a = Image(np.zeros((11, 11, 11)), np.diag([1.0, 1.0, 1.0, 1.0]))
        >>> round(a.grid_offset_mm(Image(np.zeros((11, 11, 11)), np.diag([1.001, 1.0, 1.0, 1.0]))), 6)  # 10 x 0.001
        0.01
        """
        n = self.ndim
        corners = np.array(list(itertools.product(*[(0, s - 1) for s in self.shape])), float)
        shift = other.affine[:3, 3] - self.affine[:3, 3]
        d = (other.affine[:3, :n] - self.affine[:3, :n]) @ corners.T + shift[:, None]
        return float(np.linalg.norm(d, axis=0).max())

    def same_grid(self, other: "Image", atol: float = 1e-3) -> bool:
        """True when both images have the same spatial shape and every voxel lies within ``atol`` mm of the same
        world point in both (:meth:`grid_offset_mm`)."""
        return self.shape == other.shape and self.grid_offset_mm(other) <= atol

    def index_to_world(self, ijk) -> np.ndarray:
        """RAS world coordinates of (N, ndim) voxel indices."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
        pad = np.zeros((ijk.shape[0], 3))
        pad[:, : ijk.shape[1]] = ijk
        return pad @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_index(self, xyz) -> np.ndarray:
        """Continuous voxel indices of (N, 3) RAS world points."""
        xyz = np.atleast_2d(np.asarray(xyz, dtype=float))
        inv = np.linalg.inv(self.affine)
        return (xyz @ inv[:3, :3].T + inv[:3, 3])[:, : self.ndim]

    # --- conversions -------------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, simg, meta: dict | None = None) -> "Image":
        """From a ``SimpleITK.Image`` (LPS) without any loss of geometry.

        Vector images become channels-first; a 4D image keeps the geometry of its first three
        axes and turns the fourth into channels (the NIfTI/MONAI reading of 4D).
        """
        import SimpleITK as sitk

        dim = simg.GetDimension()
        arr = sitk.GetArrayFromImage(simg)  # (z, y, x[, c]) or (t, z, y, x)
        ncomp = simg.GetNumberOfComponentsPerPixel()
        channels = ncomp > 1 or dim == 4
        if ncomp > 1 and dim == 4:
            raise ValueError("4D vector images are not supported")
        if ncomp > 1:
            arr = np.moveaxis(arr, -1, 0)
            arr = np.transpose(arr, (0, *range(arr.ndim - 1, 0, -1)))
        elif dim == 4:  # (t, z, y, x) -> (t, x, y, z)
            arr = np.transpose(arr, (0, 3, 2, 1))
        else:
            arr = np.transpose(arr, tuple(range(arr.ndim - 1, -1, -1)))
        sd = min(dim, 3)
        spacing = np.array(simg.GetSpacing(), float)[:sd]
        origin = np.array(simg.GetOrigin(), float)[:sd]
        direction = np.array(simg.GetDirection(), float).reshape(dim, dim)[:sd, :sd]
        aff_lps = np.eye(4)
        aff_lps[:sd, :sd] = direction * spacing[None, :]
        aff_lps[:sd, 3] = origin
        # scalar images stay a transposed view of SimpleITK's copy (Fortran order, like nibabel's arrays)
        arr = np.ascontiguousarray(arr) if channels else arr
        return cls(arr, LPS_TO_RAS @ aff_lps, dict(meta or {}), channels)

    def to_sitk(self):
        """To a ``SimpleITK.Image`` (LPS); multi-channel arrays become vector images."""
        import SimpleITK as sitk

        arr = self.array
        if arr.dtype in (bool, np.float16):  # ITK has neither; uint8 and float32 hold every value
            arr = arr.astype(np.uint8 if arr.dtype == bool else np.float32)
        if self.channels_first:
            arr = np.moveaxis(arr, 0, -1)
            arr = np.transpose(arr, (*range(self.ndim - 1, -1, -1), self.ndim))
            simg = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=True)
        else:
            arr = np.transpose(arr, tuple(range(self.ndim - 1, -1, -1)))
            simg = sitk.GetImageFromArray(np.ascontiguousarray(arr))
        aff_lps = LPS_TO_RAS @ self.affine
        n = self.ndim
        spacing = np.linalg.norm(aff_lps[:n, :n], axis=0) if n == 2 else np.linalg.norm(aff_lps[:3, :3], axis=0)
        direction = (aff_lps[:n, :n] if n == 2 else aff_lps[:3, :3]) / spacing[None, :]
        simg.SetSpacing([float(s) for s in spacing])
        simg.SetOrigin([float(o) for o in aff_lps[:n, 3]])
        simg.SetDirection([float(d) for d in direction.ravel()])
        return simg

    @classmethod
    def from_nibabel(cls, nimg, meta: dict | None = None) -> "Image":
        """From a nibabel image; the affine is taken as is (nibabel's best affine: sform, else qform).

        A big-endian file's voxels come out in the machine's byte order (as SimpleITK reads them): nibabel keeps the
        file's, which SimpleITK's writers and torch refuse.

        Examples
        --------
        >>> import nibabel as nib
        >>> hdr = nib.Nifti1Header(endianness=">")
        >>> img = Image.from_nibabel(nib.Nifti1Image(np.arange(8, dtype=">i2").reshape(2, 2, 2), np.eye(4), hdr))
        >>> img.array.dtype.isnative, int(img.array[1, 1, 1])
        (True, 7)
        """
        arr = np.asanyarray(nimg.dataobj)
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        channels_first = False
        if arr.ndim == 5 and arr.shape[3] == 1:  # NIfTI vector images: (x, y, z, 1, c)
            arr = arr[:, :, :, 0, :]
        if arr.ndim == 4 and arr.shape[3] == 1:  # a 3D volume stored with a singleton 4th axis
            arr = arr[..., 0]
        if arr.ndim > 4:
            raise ValueError(f"{arr.ndim}D images are not supported (shape {arr.shape})")
        if arr.ndim == 4:
            arr = np.moveaxis(arr, -1, 0)
            channels_first = True
        return cls(arr, np.asarray(nimg.affine, float), dict(meta or {}), channels_first)

    def to_nibabel(self):
        """To a ``nibabel.Nifti1Image`` (channels go to the 4th axis; a ``Nifti2Image`` beyond 32767 voxels on an
        axis or where ``meta["nifti_codes"]["version"]`` is 2), with sform and qform set; their codes are
        ``meta["nifti_codes"]``'s where positive (what a NIfTI input had), else 1 (scanner).

        Every value is kept: booleans become uint8, float16 float32, 64-bit integers the narrowest of uint16/int32
        that holds them (else they stay 64-bit). A 2D multi-channel image is one slice ``(x, y, 1, c)``: NIfTI has no
        other axis for its channels (it reads back as a single-slice volume). ``xyzt_units`` says the spatial unit:
        mm, or micron / unknown for microscopy images (``meta["unit"]`` ``'um'`` / ``'pixel'``).

        Examples
        --------
        >>> n = Image(np.zeros((4, 5), np.int64) + 2**40, np.eye(4)).to_nibabel()
        >>> str(n.get_data_dtype()), n.header.get_xyzt_units()
        ('int64', ('mm', 'unknown'))
        >>> sheared = np.eye(4)
        >>> sheared[0, 1] = 0.3
        >>> n = Image(np.zeros((2, 2, 2)), sheared).to_nibabel()
        >>> int(n.header["sform_code"]), int(n.header["qform_code"])
        (1, 0)
        """
        import nibabel as nib

        arr = self.array
        if self.channels_first:
            arr = np.moveaxis(arr, 0, -1)
            if self.ndim == 2:  # (x, y, c) would read as a 3D volume of c slices
                arr = arr[:, :, None, :]
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        if arr.dtype == np.float16:  # NIfTI has no half floats; float32 holds every value
            arr = arr.astype(np.float32)
        if arr.dtype in (np.int64, np.uint64) and arr.size:  # NIfTI readers handle 64-bit integers badly
            lo, hi = int(arr.min()), int(arr.max())
            if 0 <= lo and hi < 65536:
                arr = arr.astype(np.uint16)
            elif np.iinfo(np.int32).min <= lo and hi <= np.iinfo(np.int32).max:
                arr = arr.astype(np.int32)
        codes = self.meta.get("nifti_codes") or {}
        # NIfTI-1 dims are int16 (a volume of 2**16 + 1 slices) and its affine float32 (a NIfTI-2 input's float64
        # origin at 1e9 mm moved by 0.7 mm): NIfTI-2 then
        two = max(arr.shape, default=0) > 32767 or codes.get("version") == 2
        # nibabel refuses 64-bit integers unless told: ids beyond int32 are kept as the 64-bit type they are
        nimg = (nib.Nifti2Image if two else nib.Nifti1Image)(
            arr, self.affine, dtype=arr.dtype if arr.dtype in (np.int64, np.uint64) else None)
        nimg.set_sform(self.affine, code=int(codes.get("sform") or 1))
        nimg.set_qform(self.affine, code=int(codes.get("qform") or 1))
        hdr = nimg.header
        if not np.allclose(hdr.get_sform(), hdr.get_qform(), atol=1e-4, rtol=1e-5):  # as the reader compares them
            # a quaternion holds no shear: the qform of a sheared affine is nibabel's closest shear-free fit, which
            # ITK and medseg's reader prefer to the sform, so the file read back on another grid (up to 8.4 mm off
            # at a 0.3 shear); with qform code 0 they read the sform
            hdr["qform_code"] = 0
        nimg.header.set_xyzt_units({"um": "micron", "pixel": "unknown"}.get(self.meta.get("unit"), "mm"))
        return nimg

    def __repr__(self) -> str:  # short, because arrays are large
        sp = ", ".join(f"{s:.4g}" for s in self.spacing)
        return (f"Image(shape={self.shape}, channels={self.num_channels}, dtype={self.array.dtype}, "
                f"spacing=({sp}), orientation={self.orientation!r})")
