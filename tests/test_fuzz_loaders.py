"""Property-based fuzzing of the NIfTI and DICOM loaders (bounded for CI).

Whatever bytes a file holds, ``read_image`` either returns an ``Image`` or raises ``InputError``
(a one-line, user-facing error): never another exception type, never a hang.
"""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medseg.errors import InputError
from medseg.io import read_image

from conftest import data_path

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _mutate(raw: bytes, edits, cut: int | None) -> bytes:
    b = bytearray(raw)
    for pos, val in edits:
        b[pos % len(b)] = val
    return bytes(b[:cut] if cut else b)


@pytest.fixture(scope="module")
def nifti_raw():
    # uncompressed header + data of a real label map: mutations then hit the header fields
    return gzip.decompress(data_path("msd_hippocampus", "labelsTr", "hippocampus_001.nii.gz").read_bytes())


@pytest.fixture(scope="module")
def dicom_raw():
    return data_path("dicom", "monai_ct_tiny", "7106").read_bytes()


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 347), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(1, 20000)))
def test_nifti_header_fuzz(tmp_path_factory, nifti_raw, edits, cut):
    p = tmp_path_factory.mktemp("nii") / "case.nii"
    p.write_bytes(_mutate(nifti_raw, edits, cut))
    try:
        img = read_image(p)
    except InputError as exc:
        assert "\n" not in str(exc) and str(p) in str(exc)
    else:
        assert np.isfinite(img.affine).all()


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(128, 2000), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(132, 30000)))
def test_dicom_fuzz(tmp_path_factory, dicom_raw, edits, cut):
    d = tmp_path_factory.mktemp("dcm")
    src = data_path("dicom", "monai_ct_tiny")
    for f in src.iterdir():
        shutil.copyfile(f, d / f.name)
    (d / "7106").write_bytes(_mutate(dicom_raw, edits, cut))
    try:
        img = read_image(d)
    except InputError as exc:
        assert "\n" not in str(exc)
    else:
        assert np.isfinite(img.affine).all()
