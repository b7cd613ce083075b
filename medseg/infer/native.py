"""Back to the input's grid plane by plane: class probabilities on the network's grid in, labels out.

Resizing every class's probabilities to full resolution at once (``F.interpolate`` on the whole ``(K, *S)``
tensor) needs K float32 volumes of the input's size, plus the source: over 5 GB for 3 classes on a 512x512x800
CT, about 90 GB for 105 classes. Linear interpolation is separable, so the same values are computed one output
plane (last axis) at a time from the two source planes around it, each resized in-plane once; only the argmax
is kept. The sliding window hands its output over in plane order (``sink``), so neither the network-grid nor
the full-resolution probabilities are ever held whole.

When the probabilities are wanted too (``medseg predict --probabilities``), each finished plane goes to an
unlinked temporary file in NIfTI's voxel order (:class:`ProbabilitySpill`) instead of a ``(K, *shape)`` float32
array in RAM; :func:`write_probabilities` then streams that file into ``<case>_probs.nii.gz`` slab by slab.
RAM stays that of the labels; the disk holds ``4 * K`` bytes per voxel until the output is written.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medseg.errors import InputError

__all__ = ["PlaneResampler", "ProbabilitySpill", "write_probabilities"]

BLOCK = 16  # planes per argmax on an identical grid: bounds its int64 temporary for callers passing whole volumes


class PlaneResampler:
    """Receives class probabilities on a source grid in plane order and keeps their argmax on ``shape``.

    The values are those of ``F.interpolate(probs[None], shape, mode="trilinear", align_corners=False)``
    (bilinear for 2D), computed one output plane along the last axis at a time: each source plane is resized
    in-plane once and the two around an output plane are blended linearly. Ties go to the lower class.

    Parameters
    ----------
    source_shape : sequence of int
        Spatial shape of the probabilities handed to :meth:`add`.
    shape : sequence of int
        Spatial shape of the output (same number of axes).
    classes : int
        Number of classes (channels of the probabilities).
    keep_probabilities : bool
        Also keep the resized probabilities, ``(classes, *shape)`` float32, on disk (:class:`ProbabilitySpill`):
        :attr:`probabilities` is a read-only array mapped from that file.
    spill_dir : path, optional
        Folder of that temporary file (default: the system's temporary folder); the output folder is a good
        choice, it must have room for the final file anyway.
    file_axes : sequence of int, optional
        Axis ``j`` of ``shape`` is axis ``file_axes[j]`` of :attr:`probabilities` (default: the same order).
        A 2D model's slices come first (``shape`` is slices-first) while the file keeps the input's axis order,
        which the probabilities file (``--probabilities``) is written in, so that it is read contiguously.

    Examples
    --------
    >>> p = torch.tensor([[[0.9, 0.2]], [[0.1, 0.8]]])  # 2 classes on a 1 x 2 grid
    >>> r = PlaneResampler((1, 2), (1, 4), classes=2)
    >>> r.add(p, 0)
    >>> r.labels.tolist(), r.finished
    ([[0, 0, 1, 1]], True)
    """

    def __init__(self, source_shape: Sequence[int], shape: Sequence[int], classes: int,
                 keep_probabilities: bool = False, spill_dir: str | os.PathLike | None = None,
                 file_axes: Sequence[int] | None = None):
        self.source_shape = tuple(int(s) for s in source_shape)
        self.shape = tuple(int(s) for s in shape)
        if len(self.source_shape) != len(self.shape) or len(self.shape) not in (2, 3):
            raise ValueError(f"cannot resample {self.source_shape} to {self.shape}")
        n_src, n_out = self.source_shape[-1], self.shape[-1]
        # PyTorch's source coordinate for align_corners=False, clamped at 0 as it does
        pos = np.maximum((np.arange(n_out) + 0.5) * (n_src / n_out) - 0.5, 0.0)
        self._i0 = np.minimum(np.floor(pos).astype(np.int64), n_src - 1)
        self._i1 = np.minimum(self._i0 + 1, n_src - 1)
        self._w1 = (pos - self._i0).astype(np.float32)
        self.labels = np.zeros(self.shape, np.uint8 if classes <= 256 else np.int32)
        self._spill = None
        if keep_probabilities:
            axes = list(range(len(self.shape))) if file_axes is None else [int(a) for a in file_axes]
            file_shape = [0] * len(axes)
            for j, a in enumerate(axes):
                file_shape[a] = self.shape[j]
            self._spill = ProbabilitySpill(classes, file_shape, spill_dir, plane_axes=axes)
        self._next = 0  # next output plane
        self._cache: dict[int, torch.Tensor] = {}  # source plane -> resized in-plane
        self._tail: tuple[int, torch.Tensor] | None = None  # the previous chunk's last source plane

    @property
    def probabilities(self) -> np.ndarray | None:
        """The resized probabilities ``(classes, *shape)`` float32 (read-only, disk-backed; axes in the order
        ``file_axes`` gives), or ``None``."""
        return None if self._spill is None else self._spill.array()

    @property
    def finished(self) -> bool:
        """Whether every output plane has been computed."""
        return self._next == self.shape[-1]

    def add(self, chunk: torch.Tensor, first: int) -> None:
        """Take the probabilities ``(classes, *source_shape[:-1], n)`` of source planes ``first .. first+n-1``
        (chunks must come in order) and compute every output plane they complete."""
        chunk = torch.as_tensor(chunk)
        end = first + chunk.shape[-1]
        if self.source_shape == self.shape:
            for a in range(first, end, BLOCK):  # the same grid: argmax in blocks
                b = min(a + BLOCK, end)
                part = chunk[..., a - first: b - first]
                self.labels[..., a:b] = part.argmax(0).numpy()
                if self._spill is not None:
                    self._spill.write(part.float().numpy(), a)
            self._next = end
            return
        while self._next < self.shape[-1] and self._i1[self._next] < end:
            j = self._next
            i0, i1, w = int(self._i0[j]), int(self._i1[j]), float(self._w1[j])
            for k in [k for k in self._cache if k < i0]:
                del self._cache[k]
            p = self._plane(i0, chunk, first)
            if i1 != i0 and w > 0:
                p = p * (1.0 - w) + self._plane(i1, chunk, first) * w
            self.labels[..., j] = p.argmax(0).numpy()
            if self._spill is not None:
                self._spill.write(p.numpy()[..., None], j)
            self._next += 1
        self._tail = (end - 1, chunk[..., -1].clone())

    def _plane(self, i: int, chunk: torch.Tensor, first: int) -> torch.Tensor:
        if i not in self._cache:
            if i >= first:
                raw = chunk[..., i - first]
            elif self._tail is not None and self._tail[0] == i:
                raw = self._tail[1]
            else:
                raise RuntimeError(f"source plane {i} was not kept (chunks out of order?)")
            raw = raw.float()
            if tuple(raw.shape[1:]) != self.shape[:-1]:
                mode = "linear" if raw.ndim == 2 else "bilinear"
                raw = F.interpolate(raw[None], size=self.shape[:-1], mode=mode, align_corners=False)[0]
            self._cache[i] = raw
        return self._cache[i]


class ProbabilitySpill:
    """``(classes, *shape)`` float32 in an unlinked temporary file, laid out as a NIfTI file's voxel block.

    Each class is one Fortran-order volume, so the planes of the last axis, which arrive one after the other,
    are contiguous per class, and so is each class when the file is written out. Planes go in with ``pwrite``
    (seek + write on Windows, which has none; through the page cache, never into the process's memory);
    :meth:`array` maps the file read-only. The file has no name from the start: nothing is left behind whatever
    happens, and its space is freed with the last array that maps it.

    Planes may also arrive along another axis (``plane_axes``: a 2D model's output, slices first). Such a plane
    is strided across the whole file, so planes are gathered in a buffer of at most :attr:`BUFFER_BYTES` and
    written as runs of consecutive planes, each contiguous in the file, rather than one scattered plane at a time.

    Examples
    --------
    >>> s = ProbabilitySpill(2, (2, 3))
    >>> s.write(np.arange(12, dtype=np.float32).reshape(2, 2, 3), 0)
    >>> s.array()[1].tolist()
    [[6.0, 7.0, 8.0], [9.0, 10.0, 11.0]]
    >>> t = ProbabilitySpill(1, (2, 3), plane_axes=(1, 0))  # planes along the file's first axis, in-plane axis first
    >>> for i in range(2):
    ...     t.write(np.arange(3 * i, 3 * i + 3, dtype=np.float32).reshape(1, 3, 1), i)
    >>> t.array()[0].tolist()
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    """

    BUFFER_BYTES = 64 << 20  # planes along another axis than the last are gathered up to this size

    def __init__(self, classes: int, shape: Sequence[int], folder: str | os.PathLike | None = None,
                 plane_axes: Sequence[int] | None = None):
        self.classes, self.shape = int(classes), tuple(int(s) for s in shape)
        self._voxels = int(np.prod(self.shape))
        self._plane = int(np.prod(self.shape[:-1]))
        # written planes: their axis j is axis plane_axes[j] of the file; the last one counts the planes
        axes = tuple(range(len(self.shape))) if plane_axes is None else tuple(int(a) for a in plane_axes)
        if sorted(axes) != list(range(len(self.shape))):
            raise ValueError(f"plane_axes {axes} is not an order of the {len(self.shape)} axes")
        self._to_file = tuple(int(j) for j in np.argsort(axes))  # transposes a written block to file order
        self._along = axes[-1]
        self._pending: list[np.ndarray] | None = None  # per class: planes gathered along self._along
        self._start = self._count = 0
        folder = Path(folder) if folder is not None else Path(tempfile.gettempdir())
        self._folder = folder
        need = 4 * self.classes * self._voxels
        try:
            free = shutil.disk_usage(folder).free
            if free < need:  # fail before the prediction, not after it
                raise InputError(f"cannot write probabilities (disk full: {need / 1e9:.2f} GB needed for "
                                 f"{self.classes} classes, {free / 1e9:.2f} GB free)", path=folder)
            self._file = tempfile.TemporaryFile(prefix=".medseg-probs-", dir=folder)
            self._file.truncate(need)  # sparse: the space is taken as planes arrive
        except OSError as exc:
            raise InputError(f"cannot write probabilities ({exc.strerror or exc})", path=folder) from exc
        self._array: np.ndarray | None = None

    def write(self, planes: np.ndarray, first: int) -> None:
        """Store ``planes`` ``(classes, *shape[:-1], n)``: output planes ``first .. first+n-1`` of every class
        (with ``plane_axes``: ``planes[k]`` has the file's axes in that order)."""
        if self._along == len(self.shape) - 1:  # planes of the last axis: one contiguous run per class
            for k in range(self.classes):
                block = np.asarray(planes[k], np.float32).transpose(self._to_file)
                self._write_at(block.tobytes(order="F"), 4 * (k * self._voxels + first * self._plane))
            return
        for i in range(planes.shape[-1]):
            self._gather(planes[..., i: i + 1], first + i)

    def _gather(self, plane: np.ndarray, index: int) -> None:
        """Add one plane (``index`` along ``self._along``) to the buffer; write the buffer once it is full, at
        the last plane, or when planes stop being consecutive."""
        if self._pending is not None and index != self._start + self._count:
            self.flush()
        if self._pending is None:
            per_plane = 4 * self.classes * self._voxels // self.shape[self._along]
            depth = min(self.shape[self._along], max(1, self.BUFFER_BYTES // max(1, per_plane)))
            size = list(self.shape)
            size[self._along] = depth
            self._pending = [np.empty(size, np.float32, order="F") for _ in range(self.classes)]
            self._start, self._count = index, 0
        cut = [slice(None)] * len(self.shape)
        cut[self._along] = slice(self._count, self._count + 1)
        for k in range(self.classes):
            self._pending[k][tuple(cut)] = np.asarray(plane[k], np.float32).transpose(self._to_file)
        self._count += 1
        if self._count == self._pending[0].shape[self._along] or index == self.shape[self._along] - 1:
            self.flush()

    def flush(self) -> None:
        """Write the gathered planes: per class, one run per position along the axes after theirs (Fortran
        order: the axes before theirs and the gathered planes are consecutive in the file)."""
        if self._pending is None:
            return
        a, n = self._along, self._count
        inner = int(np.prod(self.shape[:a]))  # voxels of one plane before the axes after it
        rows = inner * n
        cut = [slice(None)] * len(self.shape)
        cut[a] = slice(0, n)
        for k, buf in enumerate(self._pending):
            runs = buf[tuple(cut)].reshape(rows, -1, order="F")  # column c: the run at outer position c
            for c in range(runs.shape[1]):
                offset = k * self._voxels + c * inner * self.shape[a] + self._start * inner
                self._write_at(np.ascontiguousarray(runs[:, c]).tobytes(), 4 * offset)
        self._pending = None

    def _write_at(self, data: bytes, offset: int) -> None:
        try:
            if hasattr(os, "pwrite"):
                self._pwrite(data, offset)
            else:  # Windows has no pwrite; flushed so that array()'s map of the file sees every plane
                self._file.seek(offset)
                self._file.write(data)
                self._file.flush()
        except OSError as exc:
            from medseg.io.atomic import looks_full

            full = "disk full: " if looks_full(exc, self._folder) else ""
            raise InputError(f"cannot write probabilities ({full}{exc.strerror or exc})", path=self._folder) from exc

    def _pwrite(self, data: bytes, offset: int) -> None:
        """Write at ``offset`` without moving the file position (one system call per chunk, no seek)."""
        view = memoryview(data)
        while view.nbytes:  # pwrite may write less than asked (2 GiB cap on Linux)
            done = os.pwrite(self._file.fileno(), view, offset)
            view, offset = view[done:], offset + done

    def array(self) -> np.ndarray:
        """The file as a read-only ``(classes, *shape)`` float32 array (mapped, not read into memory)."""
        self.flush()
        if self._array is None:
            if self.classes * self._voxels == 0:  # mmap refuses an empty file
                return np.zeros((self.classes, *self.shape), np.float32)
            mapped = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            flat = np.frombuffer(mapped, np.float32).reshape(self.classes, *self.shape[::-1])
            self._array = flat.transpose(0, *range(len(self.shape), 0, -1))
        return self._array


def release_pages(array: np.ndarray) -> None:
    """Drop the pages of a file-mapped ``array`` (a :class:`ProbabilitySpill` one) from this process's memory.

    They stay in the page cache, or on disk, and come back on the next access; without this, reading a
    mapped file through once counts all of it as the process's resident memory. Other arrays are left alone.

    Examples
    --------
    >>> s = ProbabilitySpill(1, (2, 2))
    >>> s.write(np.ones((1, 2, 2), np.float32), 0)
    >>> release_pages(s.array())
    >>> float(s.array().sum())  # read back from the file
    4.0
    """
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):  # np.frombuffer wraps the mmap in one
        base = base.obj
    if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


def write_probabilities(prob, path: str | os.PathLike, protect=()) -> Path:
    """Write channels-first probabilities (an :class:`~medseg.io.image.Image`) as float32 NIfTI, class by class.

    The file is what :func:`medseg.io.writers.write_image` writes (channels on the 4th axis, the same header),
    but it is written in slabs of about 16 MB, and the pages of a disk-backed array are dropped after each.

    Parameters
    ----------
    prob : Image
        ``channels_first`` probabilities, e.g. from :func:`medseg.infer.predict.predict_image`.
    path : path
        Output ``.nii.gz`` or ``.nii``; written atomically.
    protect : iterable of path
        Inputs that must not be overwritten.

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import nibabel as nib
    >>> import numpy as np
    >>> from medseg.io.image import Image
    >>> prob = Image(np.full((2, 4, 4, 3), 0.5, np.float32), np.eye(4), channels_first=True)  # 2 classes
    >>> path = write_probabilities(prob, Path(tempfile.mkdtemp()) / "case_probs.nii.gz")
    >>> nii = nib.load(path)
    >>> path.name, nii.shape, nii.get_data_dtype().name  # classes on the 4th axis
    ('case_probs.nii.gz', (4, 4, 3, 2), 'float32')
    """
    import gzip

    from medseg.io.atomic import atomic_path, full_suffix

    path = Path(path)
    head = _nifti_head(prob)
    with atomic_path(path, protect=protect) as tmp, open(tmp, "wb") as raw:
        # as nibabel writes .nii.gz: level 1, no file name (it would be the temporary one) and no time stamp
        gz = full_suffix(path) == ".nii.gz"
        with gzip.GzipFile("", "wb", compresslevel=1, fileobj=raw, mtime=0) if gz else raw as fh:
            fh.write(head)
            for k in range(prob.array.shape[0]):
                _write_class(fh, prob.array[k])
    return path


def _write_class(fh, volume: np.ndarray, chunk_bytes: int = 16 << 20) -> None:
    """Write one class in NIfTI (Fortran) order, in slabs of the last axis, which are consecutive in that order:
    a whole class at once would put its copy and its compressed copy in memory."""
    step = max(1, chunk_bytes // (4 * max(1, int(np.prod(volume.shape[:-1])))))
    for a in range(0, volume.shape[-1], step):
        fh.write(np.asarray(volume[..., a:a + step], np.float32).tobytes(order="F"))
        release_pages(volume)


def _nifti_head(prob) -> bytes:
    """Header and padding up to the voxels, exactly as nibabel writes them for ``prob`` (float32)."""
    import io

    import nibabel as nib

    from medseg.io.image import Image

    k = prob.array.shape[0]
    tiny = Image(np.zeros((k, *(1,) * (prob.array.ndim - 1)), np.float32), prob.affine, prob.meta, True).to_nibabel()
    buf = io.BytesIO()
    tiny.to_file_map({"image": nib.FileHolder(fileobj=buf), "header": nib.FileHolder(fileobj=buf)})
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(buf.getvalue()))
    hdr.set_data_shape((*prob.array.shape[1:], k))
    offset = int(hdr.get_data_offset())
    return hdr.binaryblock + buf.getvalue()[len(hdr.binaryblock):offset]
