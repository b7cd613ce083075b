"""Hostile inputs, part 2: model files, DICOM-SEG / RTSTRUCT imports and DICOM discovery that made medseg allocate
or parse what a small file claims. Each must be refused in one line (exit 2, the file named, nothing written)
before the allocation or the parse.

As in ``test_hostile_inputs_s49``, every case runs ``python -m medseg`` in a subprocess under an address-space
limit (a regression is an error or a timeout there, never an OOM kill of the test machine).
"""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from _dicom_series import write_ct_series
from conftest import assert_clean_error
from test_hostile_inputs_s49 import run_limited

torch = pytest.importorskip("torch")


# ------------------------------------------------------------------------------------------------ model files
def _image(tmp_path: Path) -> Path:
    import nibabel as nib

    p = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 2), np.float32), np.eye(4)), p)
    return p


def _model(folder: Path, **plan_values) -> Path:
    """A medseg model file: a small 2D network's weights under its plan with ``plan_values`` replaced."""
    from medseg.plan.plan import Plan
    from medseg.train.artifact import FORMAT, build_from_plan, versions

    plan = Plan(spatial_dims=2, patch_size=[16, 16], base_filters=4, max_filters=16)
    folder.mkdir()
    torch.save({"format": FORMAT, "format_version": 1, "plan": {**plan.to_dict(), **plan_values},
                "labels": {0: "background", 1: "fg"}, "state_dict": build_from_plan(plan).state_dict(),
                "versions": versions(), "info": {}}, folder / "model.pt")
    return folder


class _Storage:
    """Stands for a storage in the pickle below (written as torch's persistent id)."""


class _Tensor:
    def __init__(self, n: int):
        self.storage, self.n = _Storage(), n

    def __reduce__(self):
        from torch._utils import _rebuild_tensor_v2

        return _rebuild_tensor_v2, (self.storage, 0, (self.n,), (1,), False, OrderedDict())


class _Pickler(pickle.Pickler):
    def __init__(self, fh, numel: int):
        super().__init__(fh, protocol=2)
        self.numel = numel

    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", self.numel) if isinstance(obj, _Storage) else None


def _zip_bomb(path: Path, claim: int) -> None:
    """A torch zip whose one record holds 64 deflated bytes but whose central directory declares ``claim`` bytes
    (what a real bomb of deflated zeros declares), for a tensor of that size."""
    buf = io.BytesIO()
    _Pickler(buf, claim // 4).dump(_Tensor(claim // 4))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", bytes(64), compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("archive/version", "3\n")
        z.filelist[2].file_size = claim  # written to the central directory on close


def test_model_zip_bomb_is_refused_from_its_central_directory(tmp_path):
    """torch.load allocates a record's declared size before inflating it: 40 GB asked for a 1 KB file."""
    (tmp_path / "run").mkdir()
    _zip_bomb(tmp_path / "run" / "model.pt", 40 * 10**9)
    res = run_limited("predict", "-m", tmp_path / "run", "-i", _image(tmp_path), "-o", tmp_path / "out",
                      cwd=tmp_path)
    assert_clean_error(res, "model.pt", "archive declares", "memory available")
    assert not (tmp_path / "out").exists()


def test_model_plan_with_huge_base_filters_is_refused_before_building(tmp_path):
    """base_filters 10**6 with a small network's weights: the network (36 TB) was allocated before the weights were
    compared (an allocator error, exit 1); now its names and shapes are compared first."""
    run = _model(tmp_path / "run", base_filters=10**6, max_filters=10**6)
    res = run_limited("predict", "-m", run, "-i", _image(tmp_path), "-o", tmp_path / "out", cwd=tmp_path)
    assert_clean_error(res, "model.pt", "do not match the plan's network", "size mismatch")
    assert not (tmp_path / "out").exists()


def test_model_plan_with_huge_patch_is_refused_before_predicting(tmp_path):
    """A patch of 2**20 x 2**20 whose network (kernel sizes and strides recorded) matches the weights: one window
    asked torch for 128 TiB."""
    from medseg.train.network import dynunet_strides

    kernels, strides = dynunet_strides([16, 16], [1.0, 1.0])
    run = _model(tmp_path / "run", patch_size=[2**20, 2**20], kernel_sizes=kernels, strides=strides)
    res = run_limited("predict", "-m", run, "-i", _image(tmp_path), "-o", tmp_path / "out", cwd=tmp_path)
    assert_clean_error(res, "model.pt", "patch 1048576 x 1048576", "memory available")
    assert not (tmp_path / "out").exists()


def test_cell_model_json_with_huge_base_filters_is_refused_before_building(tmp_path):
    from medseg.cells.saved_config import load_config
    from medseg.cells.train import build_cell_network
    import tifffile

    run = tmp_path / "run"
    run.mkdir()
    small = {"base_filters": 4, "max_filters": 16, "patch_size": [32, 32]}
    (run / "model.json").write_text(json.dumps({"kind": "medseg-cells", "config": small}))
    torch.save(build_cell_network(load_config(run)[1]).state_dict(), run / "model.pt")
    # 10**5 filters: one 32 x 32 window's maps fit (400 MB), the network (3.6e11 bytes) does not
    (run / "model.json").write_text(json.dumps({"kind": "medseg-cells",
                                                "config": {**small, "base_filters": 10**5, "max_filters": 10**5}}))
    tifffile.imwrite(tmp_path / "cells.tif", np.zeros((32, 32), np.uint8))
    res = run_limited("cells", "count", "-i", tmp_path / "cells.tif", "-o", tmp_path / "out", "-m", run,
                      cwd=tmp_path)
    assert_clean_error(res, "model.pt", "cannot load model weights", "size mismatch")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- RTSTRUCT and DICOM-SEG
def _ct(folder: Path, slices: int, rows: int, cols: int) -> list:
    return write_ct_series(folder, [np.zeros((rows, cols), np.int16)] * slices,
                           [(0.0, 0.0, 2.0 * k) for k in range(slices)])


def test_rtstruct_declaring_more_rois_than_memory_holds_is_refused(tmp_path):
    """2000 ROIs without contours (200 kB) on a 512 x 512 x 8 series: 4 GB of masks, allocated (exit 1, 'out of
    memory', or an OOM kill without a limit) before anything was drawn."""
    from test_import_audit_s46 import _rtstruct

    dss = _ct(tmp_path / "ct", 8, 512, 512)
    rt = _rtstruct(tmp_path / "rt.dcm", dss, [(i, f"roi{i}", None, None) for i in range(1, 2001)])
    res = run_limited("convert", rt, tmp_path / "out.nii.gz", "--reference", tmp_path / "ct", cwd=tmp_path)
    assert_clean_error(res, "rt.dcm", "2000 ROIs on a 512 x 512 x 8 grid", "memory available")
    assert not (tmp_path / "out.nii.gz").exists()


@pytest.mark.parametrize("with_reference", [False, True])
def test_seg_declaring_huge_compressed_frames_and_many_segments_is_refused(tmp_path, with_reference):
    """A LABELMAP SEG (RLE: its pixel data is not checked against its frames) edited to say 65535 x 65535 frames
    and 100 segments: highdicom allocated 8 GiB of frames first, reported as 'do not form one volume'."""
    import pydicom
    from pydicom.uid import RLELossless

    from test_import_audit_s46 import _axial, _seg

    dss = _axial(tmp_path / "ct", n=2)
    pixels = np.zeros((2, 20, 24), np.uint8)
    pixels[:, 5:10, 5:10] = 1
    _seg(dss, pixels, tmp_path / "seg.dcm", kind="LABELMAP", transfer_syntax_uid=RLELossless)
    ds = pydicom.dcmread(tmp_path / "seg.dcm")
    items = []
    for i in range(1, 101):
        item = copy.deepcopy(ds.SegmentSequence[0])
        item.SegmentNumber, item.SegmentLabel = i, f"s{i}"
        items.append(item)
    ds.SegmentSequence, ds.Rows, ds.Columns = items, 65535, 65535
    ds.save_as(tmp_path / "hostile.dcm")
    ref = ("--reference", tmp_path / "ct") if with_reference else ()
    res = run_limited("convert", tmp_path / "hostile.dcm", tmp_path / "out.nii.gz", *ref, cwd=tmp_path)
    assert_clean_error(res, "hostile.dcm", "65535 x 65535 x 100 uint8 segment voxels", "memory available")
    assert not (tmp_path / "out.nii.gz").exists()


# ------------------------------------------------------------------------------------------------- discovery
@pytest.mark.parametrize("where", ["after the preamble", "after a data element"])
def test_dicom_file_of_zeros_in_a_series_folder_is_refused_unread(tmp_path, where):
    """A 1 GB sparse file with a DICM preamble (a partly written download) among the slices: pydicom read its
    zeros as (0000,0000) elements, eight bytes at a time (about 8 s per 16 MB: hours)."""
    dss = _ct(tmp_path / "ct", 3, 16, 16)
    head = (tmp_path / "ct" / "000.dcm").read_bytes()
    if where == "after the preamble":
        head = head[:132]
    else:  # up to the Modality element, after the file meta and the first elements of the data set
        head = head[:head.find(b"\x08\x00\x60\x00")]
    assert dss and head[128:132] == b"DICM"
    big = tmp_path / "ct" / "zzz.dcm"
    with open(big, "wb") as fh:
        fh.write(head)
        fh.truncate(2**30)
    res = run_limited("info", tmp_path / "ct", cwd=tmp_path)
    assert_clean_error(res, "zzz.dcm", "zero bytes where a data element should begin")
    assert os.path.getsize(big) == 2**30
