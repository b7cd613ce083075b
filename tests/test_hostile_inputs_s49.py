"""Small files that claim to be huge, and settings files built to exhaust memory: each must be refused in one line
(exit 2, the file named, nothing written) before medseg allocates what it claims.

Every case runs ``python -m medseg`` in a subprocess under an address-space limit (RLIMIT_AS), so that a
regression is a MemoryError or a timeout in that process, never an OOM kill of the test machine. The package run is
the one on PYTHONPATH when set (to check these tests against another copy of medseg), else this repository's.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, CliResult, assert_clean_error

AS_LIMIT = 4_000_000_000  # bytes of address space: enough for torch's import, far below any claim below


def _limit_memory():  # pragma: no cover - runs in the child
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def run_limited(*args, cwd: Path, timeout: float = 60) -> CliResult:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ.get("PYTHONPATH") or str(REPO)}
    p = subprocess.run([sys.executable, "-m", "medseg", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=cwd, preexec_fn=_limit_memory)
    return CliResult(p.returncode, p.stdout, p.stderr)


def _nifti_header(shape, dtype=np.float32):
    import nibabel as nib

    h = nib.Nifti1Header()
    h.set_data_dtype(dtype)
    h.set_data_shape(shape)
    h.set_sform(np.eye(4), 1)
    h.set_data_offset(352)
    return h.binaryblock + bytes(4)  # the 4-byte extension flag: voxels start at 352


def test_uncompressed_nifti_claiming_gigabytes_is_truncated_before_allocation(tmp_path):
    """416 bytes claiming 4 GB of voxels: the file's size says it is truncated, with no 4 GB buffer first."""
    p = tmp_path / "claim.nii"
    p.write_bytes(_nifti_header((1000, 1000, 1000)) + bytes(64))
    res = run_limited("info", p, cwd=tmp_path)
    assert_clean_error(res, "claim.nii", "truncated", "holds 64 of the 4000000000 bytes")


def test_nifti_gz_claiming_terabytes_names_claim_and_memory(tmp_path):
    p = tmp_path / "claim.nii.gz"
    p.write_bytes(gzip.compress(_nifti_header((30000, 30000, 30000)) + bytes(64)))
    res = run_limited("convert", p, tmp_path / "out.nii.gz", cwd=tmp_path)
    assert_clean_error(res, "claim.nii.gz", "30000 x 30000 x 30000 float32", "TiB", "memory available")
    assert not (tmp_path / "out.nii.gz").exists()


@pytest.mark.parametrize("name", ["claim.mha", "claim.nrrd"])
def test_itk_header_claiming_petabytes_is_refused_from_the_header(tmp_path, name):
    p = tmp_path / name
    if name.endswith(".mha"):
        head = ("ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\nElementType = MET_FLOAT\n"
                "ElementDataFile = LOCAL\n")
    else:
        head = ("NRRD0004\ntype: float\ndimension: 3\nsizes: 100000 100000 100000\nencoding: raw\nendian: little\n"
                "space: left-posterior-superior\nspace directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\n\n")
    p.write_bytes(head.encode() + bytes(64))
    assert_clean_error(run_limited("info", p, cwd=tmp_path), name, "100000 x 100000 x 100000", "memory available")


@pytest.mark.parametrize("header", ["data.nhdr", "data.mhd"])
def test_detached_header_may_not_read_outside_its_folder(tmp_path, header):
    """A header from outside naming '../secret' or an absolute path would turn any readable file into voxels."""
    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(range(64)))
    inner = tmp_path / "upload"
    inner.mkdir()
    (inner / "ok.raw").write_bytes(bytes(64))
    for target, refused in (("../secret.raw", True), (str(secret), True), ("ok.raw", False)):
        if header.endswith(".nhdr"):
            text = ("NRRD0004\ntype: uchar\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n"
                    f"space: left-posterior-superior\nspace directions: (1,0,0) (0,1,0) (0,0,1)\ndata file: {target}\n")
        else:
            text = f"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\nElementDataFile = {target}\n"
        (inner / header).write_text(text)
        out = tmp_path / "out.nii.gz"
        res = run_limited("convert", inner / header, out, cwd=tmp_path)
        if refused:
            assert_clean_error(res, header, "outside its folder", target)
            assert not out.exists()
        else:  # data next to the header still reads
            assert res.code == 0, res.err
            out.unlink()


def test_tiff_page_claiming_ten_gigapixels_is_refused_before_allocation(tmp_path):
    import struct

    import tifffile

    p = tmp_path / "claim.tif"
    tifffile.imwrite(p, np.zeros((4, 4), np.uint8))
    raw = bytearray(p.read_bytes())
    with tifffile.TiffFile(p) as tif:
        offsets = [tif.pages[0].tags[t].offset for t in ("ImageWidth", "ImageLength")]
    for off in offsets:  # each tag entry: code, type, count, value; as LONG 100000
        struct.pack_into("<HI", raw, off + 2, 4, 1)
        struct.pack_into("<I", raw, off + 8, 100000)
    p.write_bytes(bytes(raw))
    res = run_limited("info", p, cwd=tmp_path)
    assert_clean_error(res, "claim.tif", "100000 x 100000 uint8 pixels", "memory available")


def _plan(tmp_path: Path, **replace: str) -> Path:
    """The hippocampus plan pointing at an empty dataset folder, with ``replace``'s lines substituted."""
    text = (REPO / "configs" / "hippocampus.yaml").read_text()
    (tmp_path / "ds").mkdir(exist_ok=True)
    text = "\n".join(replace.get(ln.split(":")[0], ln) for ln in text.splitlines())
    p = tmp_path / "plan.yaml"
    p.write_text(text.replace("../../shared/data/msd_hippocampus", str(tmp_path / "ds")) + "\n")
    return p


def test_billion_laughs_plan_is_refused_without_expanding(tmp_path):
    levels = ["&a0 [MRI, MRI, MRI, MRI, MRI, MRI, MRI, MRI, MRI]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    plan = _plan(tmp_path, channels="channels: [" + ", ".join(levels) + "]")
    assert plan.stat().st_size < 4096
    res = run_limited("train", plan, "-o", tmp_path / "run", "--device", "cpu", cwd=tmp_path, timeout=120)
    assert_clean_error(res, "plan.yaml", "aliases", "expand")
    assert not (tmp_path / "run").exists()


def test_deeply_nested_plan_is_one_line(tmp_path):
    plan = _plan(tmp_path, tta="tta: " + "[" * 50000 + "]" * 50000)
    res = run_limited("train", plan, "-o", tmp_path / "run", "--device", "cpu", cwd=tmp_path)
    assert_clean_error(res, "plan.yaml", "nested too deeply")


def test_plan_file_of_many_megabytes_is_refused_before_parsing(tmp_path):
    plan = _plan(tmp_path)
    with open(plan, "ab") as f:  # sparse: tiny on disk, 64 MiB to a reader
        f.truncate(64 << 20)
    res = run_limited("train", plan, "-o", tmp_path / "run", "--device", "cpu", cwd=tmp_path)
    assert_clean_error(res, "plan.yaml", "MiB", "settings file")


def test_header_checks_keep_real_sizes():
    """The floor refuses only what cannot fit: a 512x512x2000 CT and a 2048x2048x500 light-sheet stack pass
    wherever their voxels fit in the memory available."""
    from medseg.io.limits import check_fits
    from medseg.system import allocatable_memory

    for shape, dtype in (((512, 512, 2000), np.int16), ((2048, 2048, 500), np.uint16)):
        need = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if need < allocatable_memory():
            check_fits(shape, dtype, "case.nii.gz")
    with pytest.raises(ValueError, match="case.nii.gz: the header claims 2 x 3 x 4 int16 voxels"):
        check_fits((2, 3, 4), np.int16, "case.nii.gz", copies=allocatable_memory())
