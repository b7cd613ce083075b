"""Three defects left open by earlier audits (session 46): ``--min-size`` on a sheared grid counts a voxel's true
volume ``|det(affine)|``, not the product of its axis lengths; a CT dataset whose foreground has one intensity is
refused as that, naming the dataset, not as an "invalid plan" the user never wrote; two runs recording their exports
in one finished label map at the same time keep both records, and an export is not recorded in a label map that
another run predicted again meanwhile.

Expected values come from numpy (a triple product for the voxel volume, percentiles of the voxels), scikit-image
(connected components), nibabel (records read from the header extension) and hashlib, never from medseg's output.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from skimage.measure import label as sk_label

from _dicom_series import write_ct_series
from conftest import assert_clean_error, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABELS = {0: "background", 1: "liver", 2: "spleen"}
TILT = np.radians(20)


def _model(path: Path, bias=None, **kw) -> Path:
    """A random-weight model; ``bias`` on the output layer decides the class everywhere."""
    from medseg.plan.plan import Plan
    from medseg.train.artifact import build_from_plan, save_model

    torch.manual_seed(0)
    base = dict(channels=["CT"], labels=LABELS, patch_size=[16, 16, 16], base_filters=4, max_filters=8,
                target_spacing=[1.0, 1.0, 1.0], bf16=False, orientation="RAS")
    plan = Plan(**{**base, **kw}).validate()
    weights = build_from_plan(plan).state_dict()
    if bias is not None:
        weights["output_block.conv.conv.bias"] = torch.tensor(bias, dtype=torch.float32)
    return save_model(path, plan, weights)


def _sheared_affine(flip_x: bool = False) -> np.ndarray:
    """Unit axis lengths, the third axis tilted 20 degrees towards the second (a gantry-tilted series kept as a
    sheared grid); ``flip_x`` stores the first axis the other way round (LPS-like)."""
    aff = np.eye(4)
    aff[1, 2], aff[2, 2] = np.sin(TILT), np.cos(TILT)
    aff[0, 0] = -1.0 if flip_x else 1.0
    aff[:3, 3] = (3.0, -7.0, 11.0)
    return aff


def _parallelepiped(aff: np.ndarray) -> float:
    """A voxel's volume from its edge vectors: the triple product."""
    a, b, c = aff[:3, 0], aff[:3, 1], aff[:3, 2]
    return abs(float(np.dot(a, np.cross(b, c))))


def _without_small(lab: np.ndarray, min_mm3: float, voxel_mm3: float) -> np.ndarray:
    """scikit-image: per class, the components (full connectivity) whose volume is below ``min_mm3`` set to 0."""
    out = lab.copy()
    for c in np.unique(lab[lab > 0]):
        comp = sk_label(lab == c, connectivity=lab.ndim)
        counts = np.bincount(comp.ravel())
        small = counts * voxel_mm3 < min_mm3
        small[0] = False
        out[small[comp]] = 0
    return out


# --- 1: --min-size on a sheared grid ---------------------------------------------------------------------------

@pytest.mark.parametrize("orientation, flip_x", [(None, False), ("RAS", True)])
def test_min_size_counts_a_sheared_voxel_at_its_true_volume(orientation, flip_x):
    """Components of 8 and 27 voxels on a grid sheared by 20 degrees (true voxel volume cos 20° = 0.94 mm³, the
    axis lengths' product 1 mm³): kept just below count x volume, removed just above, also when the model's
    orientation transposes the grid first. The old code removed the 8-voxel one only above 8 mm³ (6 % late)."""
    from medseg.infer.predict import predict_image
    from medseg.io.image import Image
    from medseg.plan.plan import Plan

    aff = _sheared_affine(flip_x)
    voxel = _parallelepiped(aff)
    assert voxel == pytest.approx(np.cos(TILT))
    arr = np.zeros((12, 12, 12), np.float32)
    arr[2:5, 2:5, 2:5] = 1  # 27 voxels
    arr[8:10, 8:10, 8:10] = 1  # 8 voxels
    net = lambda x: torch.cat([torch.zeros_like(x), x], 1)  # noqa: E731  class 1 where the intensity is high
    plan = Plan(patch_size=[8, 8, 8], orientation=orientation)
    img = Image(arr, aff)
    raw, _ = predict_image(net, plan, img)
    assert int((raw.array > 0).sum()) == 35
    for n in (8, 27):
        for thr in (n * voxel * (1 - 1e-4), n * voxel * (1 + 1e-4)):
            lab, _ = predict_image(net, plan, img, min_size_mm3=thr)
            assert np.array_equal(lab.array, _without_small(raw.array, thr, voxel)), (n, thr)


def test_cli_min_size_on_a_sheared_nifti_equals_scikit_image(tmp_path):
    """`medseg predict --min-size` on a sheared NIfTI equals the prediction without it, cleaned independently with the
    voxel volume of the file's affine; the threshold sits between a component's true volume and the product of the
    axis lengths (old: kept)."""
    rng = np.random.default_rng(0)
    aff = _sheared_affine()
    nib.save(nib.Nifti1Image(rng.normal(0, 200, (20, 20, 20)).astype(np.float32), aff), tmp_path / "tilted.nii.gz")
    model = _model(tmp_path / "m.pt")
    base = ["predict", "-m", model, "-i", tmp_path / "tilted.nii.gz", "--device", "cpu", "-q"]
    assert run_cli(*base, "-o", tmp_path / "raw").code == 0
    raw = np.asarray(nib.load(tmp_path / "raw" / "tilted.nii.gz").dataobj)
    voxel = _parallelepiped(aff)
    sizes = sorted({int(n) for c in (1, 2) for n in np.bincount(sk_label(raw == c, connectivity=3).ravel())[1:]})
    n = max(s for s in sizes if s < sizes[-1])  # the largest component but one (5 voxels)
    assert n >= 3
    thr = n * voxel * 1.01  # < n x 1 mm³ (the axis lengths' product): the old code kept it
    res = run_cli(*base, "-o", tmp_path / "clean", "--min-size", f"{thr!r}")
    assert res.code == 0, res
    got = np.asarray(nib.load(tmp_path / "clean" / "tilted.nii.gz").dataobj)
    expected = _without_small(raw, thr, voxel)
    assert not np.array_equal(expected, _without_small(raw, thr, 1.0))  # the volume matters here
    assert np.array_equal(got, expected)


# --- 2: a CT foreground of one intensity -----------------------------------------------------------------------

def _ct_dataset(root: Path, foregrounds: list[np.ndarray]) -> Path:
    """A CT dataset of 24³ cases: background -1000 HU, the label's voxels ``foregrounds[i]`` (in raster order)."""
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"name": "Phantom", "modality": {"0": "CT"},
                                                   "labels": {"0": "background", "1": "insert"}}))
    for i, fg in enumerate(foregrounds):
        lab = np.zeros((24, 24, 24), np.uint8)
        lab.reshape(-1)[100: 100 + len(fg) * 7: 7] = 1
        img = np.full(lab.shape, -1000.0, np.float32)
        img[lab > 0] = fg
        nib.save(nib.Nifti1Image(img.astype(np.int16), np.eye(4)), root / "imagesTr" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), root / "labelsTr" / f"c{i}.nii.gz")
    return root


def _foreground_percentiles(root: Path) -> tuple[float, float]:
    values = np.concatenate([np.asarray(nib.load(p).dataobj, np.float64)[
        np.asarray(nib.load(root / "labelsTr" / p.name).dataobj) > 0] for p in sorted((root / "imagesTr").iterdir())])
    return float(np.percentile(values, 0.5)), float(np.percentile(values, 99.5))


@pytest.mark.parametrize("foregrounds", [[np.full(300, 60.0), np.full(200, 60.0)],  # a uniform insert
                                         [np.array([35.0])],  # one voxel
                                         [np.r_[np.full(999, 40.0), 900.0]]],  # 99.9 % of one value
                         ids=["uniform", "one-voxel", "one-outlier"])
def test_a_constant_ct_foreground_is_refused_as_the_data_naming_the_dataset(tmp_path, foregrounds):
    """The foreground's 0.5 and 99.5 percentiles are equal (numpy): a CT clip [a, a] would make every image one
    value. `medseg plan` says so about the dataset (exit 2, one line) and writes nothing, where it built that clip
    and refused it as an 'invalid plan' of the user's; the Python API raises the same error."""
    from medseg.errors import InputError
    from medseg.plan.planner import make_plan

    root = _ct_dataset(tmp_path / "Dataset042_Phantom", foregrounds)
    low, high = _foreground_percentiles(root)
    assert low == high
    res = run_cli("plan", root, "-o", tmp_path / "plan.yaml")
    assert_clean_error(res, str(root), "foreground intensities of channel 'CT' are constant", f"({low:g} in")
    assert "invalid plan" not in res.err and not (tmp_path / "plan.yaml").exists()
    with pytest.raises(InputError) as exc:
        make_plan(root, memory_gb=1)
    assert exc.value.path == str(root)


def test_a_narrow_ct_foreground_still_plans_its_percentiles(tmp_path):
    """Two one-voxel cases of 50 and 70 HU: percentiles 50.1 and 69.9 (numpy), a valid clip, planned as before."""
    from medseg.plan.planner import make_plan

    root = _ct_dataset(tmp_path / "ds", [np.array([50.0]), np.array([70.0])])
    plan = make_plan(root, memory_gb=1)
    assert plan.normalisation[0].clip == pytest.approx(_foreground_percentiles(root))


# --- 3: recording exports in a finished label map ----------------------------------------------------------------

def _series(folder: Path, seed: int = 0) -> None:
    """An axial CT series of 8 slices of 20 x 24 with a bright box (pydicom)."""
    assert not folder.exists()
    vol = np.random.default_rng(seed).normal(0, 200, size=(8, 24, 20)).astype(np.int16)
    vol[2:6, 5:15, 4:12] += 800
    write_ct_series(folder, vol, [(-20.0, -30.0, 10.0 + 2.5 * k) for k in range(8)], pixel_spacing=(1.5, 1.2),
                    thickness=2.5, intercept=-1024, patient=("Left^O", "L1"))


def _record(path: Path) -> dict:
    """The medseg_predict record of a label map, read from its NIfTI comment extension with nibabel and json."""
    for e in nib.load(path).header.extensions:
        if e.get_code() == 6:
            d = json.loads(e.get_content().decode())
            if "medseg_predict" in d:
                return d["medseg_predict"]
    raise AssertionError(f"no record in {path}")


def _voxels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


@pytest.fixture
def finished(tmp_path):
    """A series predicted without --export: (model, series folder, output folder)."""
    _series(tmp_path / "A")  # one series: the case is named after its folder
    model, out = _model(tmp_path / "m.pt", target_spacing=[2.0, 2.0, 2.0], patch_size=[16, 16, 8]), tmp_path / "out"
    assert run_cli("predict", "-m", model, "-i", tmp_path / "A", "-o", out, "--device", "cpu", "-q").code == 0
    assert _voxels(out / "A.nii.gz").any()
    return model, tmp_path / "A", out


def test_two_exports_recorded_at_once_keep_both(finished, monkeypatch):
    """`predict --export dicom-seg` and `predict --export rtstruct` on one finished folder at the same time: each
    read the record, added its format and wrote it back, and the last writer dropped the other's (a later run
    exported it again). Both runs are held after reading the record until the other has read it too (or 1 s has
    passed: the other waits for the lock): both formats are recorded, the voxels kept, and reruns skip the case."""
    import medseg.infer.provenance as provenance
    from medseg.infer.cohort import predict_path

    model, study, out = finished
    before = _voxels(out / "A.nii.gz")
    both_read = threading.Barrier(2)
    attach = provenance.attach_record

    def held(nimg, record):  # between reading the record and writing it back
        try:
            both_read.wait(timeout=1.0)
        except threading.BrokenBarrierError:
            pass
        attach(nimg, record)

    monkeypatch.setattr(provenance, "attach_record", held)
    errors = []

    def run(fmt):
        try:
            predict_path(model, study, out, device="cpu", export=fmt)
        except BaseException as exc:  # noqa: BLE001  reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(fmt,)) for fmt in ("dicom-seg", "rtstruct")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    monkeypatch.setattr(provenance, "attach_record", attach)
    assert sorted(_record(out / "A.nii.gz")["extras"]) == ["dicom-seg", "rtstruct"]
    assert np.array_equal(_voxels(out / "A.nii.gz"), before)
    assert (out / "A_dicomseg.dcm").is_file() and (out / "A_rtstruct.dcm").is_file()
    for fmt in ("dicom-seg", "rtstruct"):
        assert predict_path(model, study, out, device="cpu", export=fmt) == ([], 1)


def test_an_export_is_not_recorded_in_a_label_map_predicted_again_meanwhile(finished, tmp_path, monkeypatch, capsys):
    """While `predict --export rtstruct` exports a finished case, another run predicts it again with another model
    (`--overwrite`, every voxel liver). The old code then wrote the first model's voxels back under the second
    model's record, rtstruct recorded: a later run of the second model took them for its own. Now the second
    model's label map stays as it wrote it (all liver, its SHA-256, no rtstruct recorded) and a rerun exports it."""
    import medseg.infer.cohort as cohort
    from medseg.infer.cohort import predict_path

    model, study, out = finished
    other = _model(tmp_path / "other.pt", bias=(0.0, 100.0, 0.0), target_spacing=[2.0, 2.0, 2.0],
                   patch_size=[16, 16, 8])
    export = cohort._export

    def export_while_predicted_again(*args):
        export(*args)
        predict_path(other, study, out, device="cpu", overwrite=True)

    monkeypatch.setattr(cohort, "_export", export_while_predicted_again)
    predict_path(model, study, out, device="cpu", export="rtstruct")
    lab, record = _voxels(out / "A.nii.gz"), _record(out / "A.nii.gz")
    assert record["model_sha256"] == hashlib.sha256(Path(other).read_bytes()).hexdigest()
    assert (lab == 1).all(), "the first model's voxels under the second model's record"
    assert "rtstruct" not in record["extras"]
    assert "predicted again by another run" in capsys.readouterr().err
    monkeypatch.setattr(cohort, "_export", export)
    written, skipped = predict_path(other, study, out, device="cpu", export="rtstruct")
    assert (written, skipped) == ([out / "A.nii.gz"], 0)
    assert _record(out / "A.nii.gz")["extras"] == ["rtstruct"]
