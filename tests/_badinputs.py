"""A corpus of bad inputs made at test time from the real data (never committed), and the checks every
bad-input answer must pass: the exit code, one line on stderr naming the problem, no partial output,
inputs unchanged."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from conftest import CliResult, assert_clean_error


def tree_hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (the inputs), with its mode: compared before/after a command."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest() + oct(f.stat().st_mode)
    return out


def listing(folder: Path) -> set[str]:
    """Every file under ``folder`` (hidden temp files included), relative to it. Folders are left out: an
    output folder made before a failure is no partial output as long as it holds no file."""
    if not folder.exists():
        return set()
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir()}


def truncated(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    """The first ``fraction`` of the bytes of ``src`` (a download or copy cut short)."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def header_overwritten(src: Path, dst: Path, start: int = 0, n: int = 64) -> Path:
    """``src`` with ``n`` bytes of its (decompressed) header overwritten by 0xFF; re-gzipped for .gz."""
    gz = src.name.endswith(".gz")
    data = bytearray(gzip.decompress(src.read_bytes()) if gz else src.read_bytes())
    data[start:start + n] = b"\xff" * n
    dst.write_bytes(gzip.compress(bytes(data)) if gz else bytes(data))
    return dst


def renamed(src: Path, dst: Path) -> Path:
    """A file of one type under another type's name (a PNG called .nii.gz)."""
    shutil.copyfile(src, dst)
    return dst


def nifti_like(src: Path, dst: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """A NIfTI with ``array`` as voxels and the real affine of ``src`` (or ``affine``)."""
    ref = nib.load(src)
    img = nib.Nifti1Image(array, ref.affine if affine is None else affine)
    img.set_data_dtype(array.dtype)
    nib.save(img, dst)
    return dst


def label_with_nan(src: Path, dst: Path) -> Path:
    """The real label map as float32 with a NaN and an inf voxel inside the structure."""
    lab = np.asarray(nib.load(src).dataobj).astype(np.float32)
    fg = np.argwhere(lab > 0)
    lab[tuple(fg[0])] = np.nan
    lab[tuple(fg[-1])] = np.inf
    return nifti_like(src, dst, lab)


def label_with_huge_value(src: Path, dst: Path, value: int = 70000) -> Path:
    """The real label map as uint32 with one structure relabelled to ``value`` (not in dataset.json)."""
    lab = np.asarray(nib.load(src).dataobj).astype(np.uint32)
    lab[lab == 2] = value
    return nifti_like(src, dst, lab)


def cropped(src: Path, dst: Path) -> Path:
    """The real volume with its last slice along each axis removed (shape mismatch)."""
    arr = np.asarray(nib.load(src).dataobj)
    return nifti_like(src, dst, np.ascontiguousarray(arr[:-1, :-1, :-1]))


def shifted(src: Path, dst: Path, mm: float = 5.0) -> Path:
    """The real volume with its origin moved by ``mm`` along x (same shape, different affine)."""
    img = nib.load(src)
    aff = img.affine.copy()
    aff[0, 3] += mm
    return nifti_like(src, dst, np.asarray(img.dataobj), aff)


def check_bad_input(res: CliResult, *needles: str, out: Path | None = None, before_out: set[str] | None = None,
                    inputs_before: dict[str, str] | None = None, code: int = 2) -> None:
    """All the checks of a bad-input answer (see the module docstring)."""
    assert_clean_error(res, *needles, code=code)
    if out is not None:
        assert listing(out) == (before_out or set()), f"partial output left in {out}: {listing(out)}"
    if inputs_before is not None:
        roots = {Path(p) for p in inputs_before}
        assert tree_hashes(*roots) == inputs_before, "an input was modified"


def mount_tiny_tmpfs(path: Path, size: str = "64k") -> bool:
    """Mount a tiny tmpfs at ``path`` (needs root and a mount namespace that allows it); False if impossible."""
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return p.returncode == 0
