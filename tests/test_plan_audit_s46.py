"""Plan audit (session 46): the fingerprint and plan of the real datasets against independent nibabel / pydicom /
numpy computations and nnU-Net's documented rules (median spacing, the 10th percentile of a coarse axis, the 0.5 /
99.5 percentiles of the foreground voxels), and the same data presented another way (NRRD / MHA copies, CLI vs
Python API). Real data from ../shared/data, read in place (tests link to it; copies only under tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import assert_clean_error, data_path, run_cli
from medseg.errors import InputError
from medseg.plan.fingerprint import compute_fingerprint
from medseg.plan.planner import make_plan
from medseg.train.dataset import open_dataset

ALL = 10**9  # samples_per_case that keeps every foreground voxel: the exact statistics


def _spleen():
    return (data_path("ct_spleen_sample", "sub-spleen2", "ct", "sub-spleen2_ct.nii.gz"),
            data_path("ct_spleen_sample", "derivatives", "labels", "sub-spleen2", "ct",
                      "sub-spleen2_ct_seg-manual.nii.gz"))


def _totalseg():
    return data_path("totalseg_example", "example_ct_sm.nii.gz"), data_path("totalseg_example", "example_seg.nii.gz")


def _layout(root: Path, labels: dict, channel: str = "CT") -> Path:
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": channel},
                                                   "labels": {str(k): v for k, v in labels.items()}}))
    return root


def _linked(root: Path, cases: dict, labels: dict) -> Path:
    """A dataset folder whose files are links to the real ones: ``cases`` maps a case id to (image, label)."""
    _layout(root, labels)
    for cid, (img, lab) in cases.items():
        (root / "imagesTr" / f"{cid}.nii.gz").symlink_to(img)
        (root / "labelsTr" / f"{cid}.nii.gz").symlink_to(lab)
    return root


def _ras(path) -> tuple[np.ndarray, list[float]]:
    """nibabel's RAS voxels (float64) and voxel sizes of a NIfTI file."""
    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(img.dataobj, np.float64), [float(z) for z in img.header.get_zooms()[:3]]


def _dicom_ras(folder: Path) -> tuple[np.ndarray, list[float]]:
    """pydicom's axial CT series as RAS voxels (HU) and voxel sizes: slices by position, spacing from positions."""
    import pydicom

    slices = sorted((pydicom.dcmread(p) for p in folder.glob("CT_*.dcm")),
                    key=lambda d: float(d.ImagePositionPatient[2]))
    assert all(np.allclose([float(v) for v in d.ImageOrientationPatient], [1, 0, 0, 0, 1, 0]) for d in slices)
    vol = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices], -1)
    z = np.diff([float(d.ImagePositionPatient[2]) for d in slices])
    assert np.allclose(z, z[0])
    row, col = (float(v) for v in slices[0].PixelSpacing)
    # (row, column, slice) = (P, L, S) in LPS: RAS reverses the first two and puts the column first
    return vol.transpose(1, 0, 2)[::-1, ::-1].astype(np.float64), [col, row, float(z[0])]


def _stats(v: np.ndarray) -> dict:
    return {"mean": v.mean(), "std": v.std(), "p00_5": np.percentile(v, 0.5), "p99_5": np.percentile(v, 99.5),
            "min": v.min(), "max": v.max()}


def _nnunet_target_spacing(spacings, shapes) -> list[float]:
    """nnU-Net v2's rule: the median; a coarse axis (over 3x the others' spacing, and with under a third of their
    voxels) takes the 10th percentile of its spacings, kept at least as coarse as the other axes."""
    sp, sh = np.asarray(spacings, float), np.asarray(shapes, float)
    target, size = np.median(sp, 0), np.median(sh, 0)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    if target[worst] > 3 * target[others].max() and size[worst] * 3 < size[others].min():
        target[worst] = max(np.percentile(sp[:, worst], 10), target[others].max())
    return target.tolist()


def _reference(cases) -> dict:
    """Spacings, shapes, class counts and exact foreground statistics from (voxels, spacing, label) per case."""
    fg, counts, spacings, shapes = [], {}, [], []
    for img, sp, lab in cases:
        assert img.shape == lab.shape
        spacings.append(sp)
        shapes.append(list(lab.shape))
        fg.append(img[lab > 0])
        for v, n in zip(*np.unique(lab, return_counts=True)):
            counts[int(v)] = counts.get(int(v), 0) + int(n)
    return {"spacings": spacings, "shapes": shapes, "class_voxels": counts, "stats": _stats(np.concatenate(fg))}


# --- defects -----------------------------------------------------------------------------------------------------

def test_negative_cases_add_nothing_to_the_ct_foreground_statistics(tmp_path):
    """A lesion dataset's negatives (a case whose label is empty) were sampled over all their voxels and pooled
    with the foreground: one real CT without spleen next to the spleen case took the plan's CT clip from
    [-24, 133] to [-1013, 178] HU and its mean / std from 85 / 26 to -137 / 392 (the spleen's contrast squeezed
    15-fold). As nnU-Net, a case without foreground now adds nothing; a dataset without any foreground still gets
    the statistics of all its voxels."""
    spleen_img, spleen_lab = _spleen()
    ct = _totalseg()[0]
    empty = {}  # an empty label on each image's grid
    for name, path in (("spleen", spleen_img), ("ct", ct)):
        ref = nib.load(str(path))
        empty[name] = tmp_path / f"empty_{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros(ref.shape, np.uint8), ref.affine), str(empty[name]))
    root = _linked(tmp_path / "ds", {"spleen": (spleen_img, spleen_lab), "negative": (ct, empty["ct"])},
                   {0: "background", 1: "spleen"})
    img, _ = _ras(spleen_img)
    lab, _ = _ras(spleen_lab)
    exact = _stats(img[lab > 0])
    fp = compute_fingerprint(open_dataset(root), samples_per_case=ALL)
    assert fp.intensity[0] == pytest.approx(exact)
    assert fp.class_voxels[1] == int((lab > 0).sum()) and fp.class_cases == {0: 2, 1: 1}
    # the plan (default sampling of 10,000 voxels per case: within its precision, std 2.4 HU for the 0.5 percentile)
    n = make_plan(root, memory_gb=4).normalisation[0]
    sd = exact["std"]
    assert n.scheme == "ct" and abs(n.mean - exact["mean"]) < 0.1 * sd and abs(n.std / sd - 1) < 0.1
    assert np.abs(np.subtract(n.clip, (exact["p00_5"], exact["p99_5"]))).max() < 0.25 * sd, (n, exact)
    # no foreground anywhere: every voxel of every case
    none = _linked(tmp_path / "none", {"a": (spleen_img, empty["spleen"]), "b": (ct, empty["ct"])},
                   {0: "background", 1: "spleen"})
    allvox = np.concatenate([img.ravel(), _ras(ct)[0].ravel()])
    assert compute_fingerprint(open_dataset(none), samples_per_case=ALL).intensity[0] == pytest.approx(_stats(allvox))


def test_a_missing_output_folder_is_refused_before_the_fingerprint(tmp_path, monkeypatch):
    """``medseg plan DATASET -o missing/plan.yaml`` read and fingerprinted the whole dataset (15 s for the 4 BraTS
    cases here, minutes for a large CT set) before saying that the folder does not exist."""
    import medseg.plan.planner as planner

    def fingerprint(*args, **kwargs):
        raise AssertionError("the dataset was fingerprinted")

    monkeypatch.setattr(planner, "compute_fingerprint", fingerprint)
    root = _linked(tmp_path / "spleen", {"spleen2": _spleen()}, {0: "background", 1: "spleen"})
    with pytest.raises(InputError, match="output folder does not exist"):
        planner.make_plan(root, memory_gb=4, output=tmp_path / "missing" / "plan.yaml")
    assert_clean_error(run_cli("plan", root, "-o", tmp_path / "missing" / "plan.yaml"), "missing",
                       "output folder does not exist")
    assert not (tmp_path / "missing").exists()


# --- properties found to hold (kept as regression tests) ----------------------------------------------------------

def _hippocampus(tmp_path):
    root = data_path("msd_hippocampus")
    cases = [(*_ras(root / "imagesTr" / p.name), _ras(p)[0]) for p in sorted((root / "labelsTr").glob("*.nii.gz"))]
    return root, cases


def _ct_spleen(tmp_path):
    img, lab = _spleen()
    root = _linked(tmp_path / "spleen", {"spleen2": (img, lab)}, {0: "background", 1: "spleen"})
    return root, [(*_ras(img), _ras(lab)[0])]


def _ct_totalseg(tmp_path):
    img, lab = _totalseg()
    root = _linked(tmp_path / "ts", {"ts": (img, lab)}, {i: f"organ{i}" if i else "background" for i in range(118)})
    return root, [(*_ras(img), _ras(lab)[0])]


def _ct_dicom(tmp_path):
    """The 4-slice CT series converted by ``medseg convert``; the reference reads the DICOM files with pydicom."""
    series = data_path("dicom", "ct_rtstruct")
    root = _layout(tmp_path / "dicom", {0: "background", 1: "roi1", 2: "roi2"})
    assert run_cli("convert", series, root / "imagesTr" / "rt.nii.gz").code == 0
    (root / "labelsTr" / "rt.nii.gz").symlink_to(series / "Mask.nii.gz")
    return root, [(*_dicom_ras(series), _ras(series / "Mask.nii.gz")[0])]


@pytest.mark.parametrize("make", [_hippocampus, _ct_spleen, _ct_totalseg, _ct_dicom],
                         ids=["hippocampus", "ct_spleen", "totalseg_118_classes", "dicom_ct"])
def test_fingerprint_and_plan_equal_independent_computation(tmp_path, make):
    """Per case RAS spacings and shapes, class counts and the foreground (label > 0) statistics of every voxel equal
    nibabel / pydicom + numpy; the default 10,000-voxel sample is within its precision of them (exact for the
    hippocampus, whose cases hold 2,382-4,401 foreground voxels); the target spacing is nnU-Net's; the plan is 2D
    only for thick slices; an unconstrained patch is the smallest the network runs on that holds the median case."""
    root, cases = make(tmp_path)
    ref = _reference(cases)
    ds = open_dataset(root)
    fp = compute_fingerprint(ds, samples_per_case=ALL)
    assert fp.shapes == ref["shapes"] and np.allclose(fp.spacings, ref["spacings"])
    assert fp.class_voxels == ref["class_voxels"]
    assert fp.intensity[0] == pytest.approx(ref["stats"])
    sampled, sd = compute_fingerprint(ds).intensity[0], ref["stats"]["std"]
    for key, tol in (("mean", 0.1), ("std", 0.1), ("p00_5", 0.25), ("p99_5", 0.25)):
        assert abs(sampled[key] - ref["stats"][key]) <= tol * sd, (key, sampled[key], ref["stats"][key])
    plan = make_plan(ds, fingerprint=compute_fingerprint(ds), memory_gb=4)
    assert plan.target_spacing == pytest.approx(_nnunet_target_spacing(ref["spacings"], ref["shapes"]), abs=1e-4)
    srt = sorted(plan.target_spacing)
    assert plan.spatial_dims == (2 if srt[2] > 3 * srt[0] and srt[2] > 1.01 * srt[1] else 3)
    assert plan.normalisation[0].scheme == ("ct" if make is not _hippocampus else "zscore")
    if make in (_hippocampus, _ct_spleen):  # not shrunk to a memory budget: the median case, rounded up
        axes = range(3) if plan.spatial_dims == 3 else [i for i in range(3) if i != plan.slice_axis]
        median = np.median([np.multiply(s, sp) for s, sp in zip(ref["shapes"], ref["spacings"])], 0)
        median = [median[i] / plan.target_spacing[i] for i in axes]
        unit = [2 ** min(5, int(np.log2(p / 4))) for p in plan.patch_size]  # halved while >= 8, at most 5 times
        assert all(p % u == 0 and m <= p < m + u for p, u, m in zip(plan.patch_size, unit, median)), \
            (plan.patch_size, median)


def test_nrrd_and_mha_copies_give_the_same_fingerprint_and_plan(tmp_path):
    """The spleen and 118-class CTs written by SimpleITK as NRRD (image) and MHA (label) in another folder."""
    import SimpleITK as sitk

    spleen, ts = _spleen(), _totalseg()
    labels = {i: f"organ{i}" if i else "background" for i in range(118)}
    nifti = _linked(tmp_path / "nifti", {"a": spleen, "b": ts}, labels)
    other = _layout(tmp_path / "other", labels)
    for cid, (img, lab) in (("a", spleen), ("b", ts)):
        for src, dst in ((img, other / "imagesTr" / f"{cid}.nrrd"), (lab, other / "labelsTr" / f"{cid}.mha")):
            im = sitk.ReadImage(str(src))
            for key in im.GetMetaDataKeys():  # NIfTI header fields MetaIO warns it cannot write
                im.EraseMetaData(key)
            sitk.WriteImage(im, str(dst), True)
    fps = [compute_fingerprint(open_dataset(r)) for r in (nifti, other)]
    assert np.allclose(fps[0].spacings, fps[1].spacings, rtol=1e-6, atol=0)
    a, b = (dict(f.to_dict(), spacings=None) for f in fps)
    assert a == b
    plans = [make_plan(r, memory_gb=4, fingerprint=f).to_dict() for r, f in zip((nifti, other), fps)]
    for p in plans:
        p.pop("dataset"), p.pop("name")  # the folder's name
    assert plans[0] == plans[1]


def test_cli_plan_equals_the_python_api_and_reads_back_equal(tmp_path):
    """``medseg plan`` (default budget) writes the plan ``make_plan`` returns, and reading it gives that plan."""
    from medseg.plan.plan import Plan

    root = _linked(tmp_path / "spleen", {"spleen2": _spleen()}, {0: "background", 1: "spleen"})
    res = run_cli("plan", root, "-o", tmp_path / "plan.yaml")
    assert res.code == 0, res.err
    api = make_plan(root)
    assert Plan.from_yaml(tmp_path / "plan.yaml") == api
    api.to_yaml(tmp_path / "api.yaml")
    assert Plan.from_yaml(tmp_path / "api.yaml") == api
