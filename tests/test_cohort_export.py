"""``medseg predict --export`` on cohorts of DICOM series: the same objects as ``predict`` then ``medseg export``,
reruns and shards that finish every case once, cases predicted without foreground, series that cannot be exported
or predicted refused before anything is written, and no two cases writing one file.

Synthetic series (pydicom, 8 slices of 20 x 24, oblique) and a random-weight model: the mechanics are under test.
Expected values come from pydicom, nibabel and numpy, never from medseg's own output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from _dicom_series import write_ct_series
from conftest import assert_clean_error, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABELS = {0: "background", 1: "liver", 2: "spleen"}
COS, SIN = np.cos(0.4), np.sin(0.4)
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


def _model(path: Path, bias=None, **kw) -> Path:
    """A random-weight model (seed 0 predicts all three classes on these series); ``bias`` on the output layer
    decides the class everywhere (``(100, 0, 0)``: background only)."""
    from medseg.plan.plan import Plan
    from medseg.train.artifact import build_from_plan, save_model

    torch.manual_seed(0)
    base = dict(channels=["CT"], labels=LABELS, patch_size=[16, 16, 8], base_filters=4, max_filters=8,
                target_spacing=[2.0, 2.0, 2.0], bf16=False, orientation="RAS")
    plan = Plan(**{**base, **kw}).validate()
    weights = build_from_plan(plan).state_dict()
    if bias is not None:
        weights["output_block.conv.conv.bias"] = torch.tensor(bias, dtype=torch.float32)
    return save_model(path, plan, weights)


def _series(folder: Path, seed: int, number: int, iop=(COS, SIN, 0, 0, 0, -1), positions=None) -> str:
    """An oblique CT series with a bright box (one study, SeriesNumber ``number``: discovery order); its UID."""
    assert not folder.exists()
    rng = np.random.default_rng(seed)
    vol = rng.normal(0, 200, size=(8, 24, 20)).astype(np.int16)
    vol[2:6, 5:15, 4:12] += 800
    normal = np.cross(iop[:3], iop[3:])
    positions = positions or [np.array([-20.0, -30.0, 10.0]) + 2.5 * k * normal for k in range(8)]
    dss = write_ct_series(folder, vol[: len(positions)], positions, iop, (1.5, 1.2), thickness=2.5, study=STUDY_UID,
                          series_number=number, intercept=-1024)
    return str(dss[0].SeriesInstanceUID)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    for i, name in enumerate("ABC"):
        _series(root / name, seed=i, number=i + 1)
    return root


def _predict(model, inp, out, *args):
    return run_cli("predict", "-m", model, "-i", inp, "-o", out, "--device", "cpu", "-q", *args)


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


_VARYING = {"SOPInstanceUID", "SeriesInstanceUID", "ContentDate", "ContentTime", "InstanceCreationDate",
            "InstanceCreationTime", "SeriesDate", "SeriesTime", "StructureSetDate", "StructureSetTime",
            "ContributingEquipmentSequence", "DimensionIndexSequence", "DimensionOrganizationSequence"}


@pytest.mark.parametrize("fmt", ["dicom-seg", "rtstruct"])
def test_export_in_one_step_equals_predict_then_export(study, tmp_path, fmt):
    """``predict --export`` on a cohort writes per case what ``predict`` then ``medseg export --labels`` writes:
    every element equal but the new UIDs and timestamps, referencing the input series; a rerun changes nothing."""
    model, one, two = _model(tmp_path / "m.pt"), tmp_path / "one", tmp_path / "two"
    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({"labels": {str(k): v for k, v in LABELS.items()}}))
    assert _predict(model, study, one, "--export", fmt).code == 0
    assert _predict(model, study, two).code == 0
    suffix = fmt.replace("-", "")
    for case in "ABC":
        lab = np.asarray(nib.load(one / f"{case}.nii.gz").dataobj)
        assert np.array_equal(lab, np.asarray(nib.load(two / f"{case}.nii.gz").dataobj))
        assert set(np.unique(lab)) == {0, 1, 2}  # every class exported
        res = run_cli("export", two / f"{case}.nii.gz", "--reference", study / case, "--format", fmt,
                      "-o", two / f"{case}_{suffix}.dcm", "--labels", labels)
        assert res.code == 0, res.err
        a, b = pydicom.dcmread(one / f"{case}_{suffix}.dcm"), pydicom.dcmread(two / f"{case}_{suffix}.dcm")
        differ = [k for k in sorted(set(a.dir()) | set(b.dir())) if k not in _VARYING and a.get(k) != b.get(k)]
        assert differ == [], case
        src = pydicom.dcmread(study / case / "000.dcm", stop_before_pixels=True)
        refs = a.ReferencedSeriesSequence if fmt == "dicom-seg" else \
            a.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence
        assert refs[0].SeriesInstanceUID == src.SeriesInstanceUID
    before = _mtimes(one)
    res = _predict(model, study, one, "--export", fmt)
    assert res.code == 0 and "skipped 3" in res.out, res
    assert _mtimes(one) == before


def test_shards_and_reruns_finish_every_export_once(study, tmp_path):
    """Shards 0/2, 1/2 write each case and its export once; a missing export or label map re-does that case only."""
    model, out = _model(tmp_path / "m.pt"), tmp_path / "out"
    for i in range(2):
        assert _predict(model, study, out, "--export", "rtstruct", "--shard", f"{i}/2").code == 0
    names = sorted(f"{c}{s}" for c in "ABC" for s in (".nii.gz", "_rtstruct.dcm"))
    assert sorted(p.name for p in out.iterdir()) == names
    for gone in ("B_rtstruct.dcm", "C.nii.gz"):
        before = _mtimes(out)
        (out / gone).unlink()
        res = _predict(model, study, out, "--export", "rtstruct")
        assert res.code == 0 and "wrote 1" in res.out and "skipped 2" in res.out, res
        case = gone[0]
        assert {k for k, v in _mtimes(out).items() if before.get(k) != v} == {f"{case}.nii.gz", f"{case}_rtstruct.dcm"}


def test_export_added_to_a_finished_cohort_does_not_predict_again(study, tmp_path, monkeypatch):
    """`predict` then `predict --export` into the same folder ran the network again for every case; the label maps
    are this model's, so each object is made from its label map, equal to what one `predict --export` writes, the
    label maps keep their voxels, and a third run skips every case."""
    import medseg.infer.predict as predict

    model, one, two = _model(tmp_path / "m.pt"), tmp_path / "one", tmp_path / "two"
    assert _predict(model, study, one, "--export", "dicom-seg").code == 0
    assert _predict(model, study, two).code == 0
    before = {c: np.asarray(nib.load(two / f"{c}.nii.gz").dataobj) for c in "ABC"}

    def no_network(*a, **k):
        raise AssertionError("predicted again")

    monkeypatch.setattr(predict, "predict_image", no_network)
    res = _predict(model, study, two, "--export", "dicom-seg")
    assert res.code == 0 and "3 finished case(s) exported" in res.err, res
    for c in "ABC":
        assert np.array_equal(np.asarray(nib.load(two / f"{c}.nii.gz").dataobj), before[c])
        a, b = pydicom.dcmread(one / f"{c}_dicomseg.dcm"), pydicom.dcmread(two / f"{c}_dicomseg.dcm")
        assert [k for k in sorted(set(a.dir()) | set(b.dir())) if k not in _VARYING and a.get(k) != b.get(k)] == []
    res = _predict(model, study, two, "--export", "dicom-seg")
    assert res.code == 0 and "skipped 3" in res.out and res.err == "", res
    # another model's label maps are still refused, not exported
    assert_clean_error(_predict(_model(tmp_path / "other.pt", bias=(0.0, 5.0, 0.0)), study, two, "--export",
                                "rtstruct"), "not this run's prediction")


def test_export_added_to_finished_cases_without_foreground_writes_no_object(study, tmp_path, monkeypatch):
    """The cases of a model that found nothing, predicted without --export: --export then says so for each, writes
    no object (which would hold no segment), predicts nothing, and the next run skips them."""
    import medseg.infer.predict as predict

    model, out = _model(tmp_path / "empty.pt", bias=(100.0, 0.0, 0.0)), tmp_path / "out"
    assert _predict(model, study, out).code == 0
    monkeypatch.setattr(predict, "predict_image", lambda *a, **k: (_ for _ in ()).throw(AssertionError("predicted")))
    res = _predict(model, study, out, "--export", "rtstruct")
    assert res.code == 0 and res.err.count("no foreground") == 3, res
    assert sorted(p.name for p in out.iterdir()) == ["A.nii.gz", "B.nii.gz", "C.nii.gz"]
    res = _predict(model, study, out, "--export", "rtstruct")
    assert res.code == 0 and "skipped 3" in res.out and res.err == "", res


def test_a_case_without_foreground_gets_no_export_and_is_finished(study, tmp_path):
    """A model that finds nothing (no tumour in this patient) is a result, not bad input: each label map is written,
    the DICOM object (which cannot be empty) is not, with a note, and the rerun skips the cases. Before, the cohort
    stopped at the first such case with exit 2, and every rerun did again."""
    model, out = _model(tmp_path / "empty.pt", bias=(100.0, 0.0, 0.0)), tmp_path / "out"
    res = _predict(model, study, out, "--export", "dicom-seg")
    assert res.code == 0, res.err
    assert sorted(p.name for p in out.iterdir()) == ["A.nii.gz", "B.nii.gz", "C.nii.gz"]
    for case in "ABC":
        assert not np.asarray(nib.load(out / f"{case}.nii.gz").dataobj).any()
    assert len(res.err.strip().splitlines()) == 3 and "no foreground" in res.err
    res = _predict(model, study, out, "--export", "dicom-seg")
    assert res.code == 0 and "skipped 3" in res.out and res.err == "", res
    # a stale object of another model does not stay beside the new, empty label map
    other = _model(tmp_path / "full.pt")
    assert _predict(other, study, tmp_path / "full", "--export", "dicom-seg").code == 0
    (tmp_path / "full" / "A_dicomseg.dcm").rename(out / "A_dicomseg.dcm")
    assert _predict(model, study, out, "--export", "dicom-seg", "--overwrite").code == 0
    assert not (out / "A_dicomseg.dcm").exists()


def test_a_series_that_cannot_be_referenced_is_refused_before_anything_is_written(tmp_path):
    """Series C without a FrameOfReferenceUID: before, A and B were predicted and exported, then C predicted and
    refused in the name of the whole study folder; now one line names C, and nothing is written."""
    root = tmp_path / "study"
    for i, name in enumerate("ABC"):
        _series(root / name, seed=i, number=i + 1)
    for f in (root / "C").iterdir():
        ds = pydicom.dcmread(f)
        ds.FrameOfReferenceUID = ""
        ds.save_as(f)
    out = tmp_path / "out"
    assert_clean_error(_predict(_model(tmp_path / "m.pt"), root, out, "--export", "rtstruct"),
                       str(root / "C"), "FrameOfReferenceUID")
    assert not out.exists()


def test_two_cases_that_would_write_one_file_are_refused(tmp_path):
    """Cases ``x`` and ``x_probs`` with --probabilities: x's probabilities were replaced by x_probs's label map
    and a rerun called both finished. Every shard refuses, before anything is written."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("x", "x_probs"):
        nib.save(nib.Nifti1Image(rng.normal(size=(20, 18, 16)).astype(np.float32), np.diag([1.2, 1, 1.5, 1])),
                 folder / f"{name}.nii.gz")
    model = _model(tmp_path / "m.pt")
    for shard in ("0/2", "1/2", "0/1"):
        assert_clean_error(_predict(model, folder, out, "--probabilities", "--shard", shard),
                           "x_probs.nii.gz", "'x'", "'x_probs'")
        assert not out.exists()
    assert _predict(model, folder, out).code == 0  # without probabilities the names are distinct


def test_one_name_in_two_formats_is_not_two_channels(tmp_path):
    """``a.nii.gz`` beside ``a.mha`` (a converted copy) were stacked as channels 0 and 1 of a two-channel model's
    case ``a``, silently; they are two images with one output name."""
    from medseg.plan.plan import Normalisation

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    img = nib.Nifti1Image(rng.normal(size=(20, 18, 16)).astype(np.float32), np.diag([1.2, 1, 1.5, 1]))
    nib.save(img, folder / "a.nii.gz")
    import SimpleITK as sitk

    sitk.WriteImage(sitk.ReadImage(str(folder / "a.nii.gz")), str(folder / "a.mha"))
    model = _model(tmp_path / "m.pt", channels=["T1", "T2"], normalisation=[Normalisation(), Normalisation()])
    assert_clean_error(_predict(model, folder, tmp_path / "out"), "a.mha", "a.nii.gz", "case 'a'")
    assert not (tmp_path / "out").exists()


def test_the_advice_for_a_tilted_series_works(tmp_path):
    """A gantry-tilted series is refused, as before, but the advice was `--allow-tilt`, which predict does not
    take; the advice given now (convert with --allow-tilt, predict that file) runs."""
    pos = [np.array([-15.0, -18.0 + 0.5 * k, 2.5 * k]) for k in range(8)]  # each slice 0.5 mm further posterior
    _series(tmp_path / "tilted", seed=0, number=1, iop=(1, 0, 0, 0, 1, 0), positions=pos)
    model, out = _model(tmp_path / "m.pt"), tmp_path / "out"
    assert_clean_error(_predict(model, tmp_path / "tilted", out), "tilted", "gantry tilt",
                       "medseg convert --allow-tilt")
    assert not out.exists()
    assert run_cli("convert", tmp_path / "tilted", tmp_path / "untilted.nii.gz", "--allow-tilt").code == 0
    assert _predict(model, tmp_path / "untilted.nii.gz", out).code == 0
    assert nib.load(out / "untilted.nii.gz").shape == nib.load(tmp_path / "untilted.nii.gz").shape


def test_an_interrupted_cohort_leaves_whole_outputs_and_the_rerun_completes(study, tmp_path, monkeypatch):
    """Ctrl-C while the second case's label map is being written: the first case is whole, the second has its
    export (written first) but no label map and no temporary file; the rerun predicts the second and third."""
    import medseg.infer.cohort as cohort

    model, out = _model(tmp_path / "m.pt"), tmp_path / "out"
    saves, save = [], nib.save

    def interrupted(img, path):
        saves.append(path)
        if len(saves) == 2:
            Path(path).write_bytes(b"half")
            raise KeyboardInterrupt
        save(img, path)

    monkeypatch.setattr(nib, "save", interrupted)
    assert _predict(model, study, out, "--export", "dicom-seg").code == 130
    monkeypatch.setattr(nib, "save", save)
    first, second = (c.name for c in cohort.list_cases(study)[:2])
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{first}.nii.gz", f"{first}_dicomseg.dcm",
                                                            f"{second}_dicomseg.dcm"])
    res = _predict(model, study, out, "--export", "dicom-seg")
    assert res.code == 0 and "wrote 2" in res.out and "skipped 1" in res.out, res
    assert len(list(out.iterdir())) == 6


def test_keep_going_predicts_the_other_cases_and_names_the_bad_one(tmp_path):
    """A case whose pixel data are cut short is found only when read: by default the cohort stops there (exit 2, the
    cases before it written); with --keep-going the others are predicted, the bad one is named on stderr, the run
    ends with exit 2 counting it, and a rerun retries only it."""
    model = _model(tmp_path / "model.pt")
    cases = tmp_path / "cases"
    cases.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c"):
        nib.save(nib.Nifti1Image(rng.normal(0, 200, (20, 24, 8)).astype(np.float32), np.diag([2, 2, 2, 1.0])),
                 cases / f"{name}.nii")
    data = (cases / "b.nii").read_bytes()
    (cases / "b.nii").write_bytes(data[:len(data) // 2])  # header whole, voxels missing
    stop = run_cli("predict", "-m", model, "-i", cases, "-o", tmp_path / "stop", "-q")
    assert_clean_error(stop, "b.nii")
    assert sorted(p.name for p in (tmp_path / "stop").iterdir()) == ["a.nii.gz"]
    going = run_cli("predict", "-m", model, "-i", cases, "-o", tmp_path / "going", "-q", "--keep-going")
    assert going.code == 2 and "1 of 3 case(s) failed (b)" in going.err and "b.nii" in going.err
    assert sorted(p.name for p in (tmp_path / "going").iterdir()) == ["a.nii.gz", "c.nii.gz"]
    for name in ("a", "c"):
        out = nib.load(tmp_path / "going" / f"{name}.nii.gz")
        assert out.shape == (20, 24, 8) and np.allclose(out.affine, np.diag([2, 2, 2, 1.0]))
    again = run_cli("predict", "-m", model, "-i", cases, "-o", tmp_path / "going", "-q", "--keep-going")
    assert again.code == 2 and "1 of 1 case(s) failed (b)" in again.err


def test_keep_going_exports_the_other_finished_cases_past_an_unreadable_label_map(study, tmp_path):
    """A finished label map cut short (header and record whole, voxels missing): `predict --export` names it in one
    line, exit 2, and writes no object for it; with --keep-going the other finished cases are exported (the run
    stopped at the bad one, and C was left without its object), and the bad label map is left as it was."""
    model, out = _model(tmp_path / "m.pt"), tmp_path / "out"
    assert _predict(model, study, out).code == 0
    data = (out / "B.nii.gz").read_bytes()
    (out / "B.nii.gz").write_bytes(data[:len(data) // 2])
    shutil.copytree(out, tmp_path / "stop")
    stop = _predict(model, study, tmp_path / "stop", "--export", "dicom-seg")
    assert_clean_error(stop, str(tmp_path / "stop" / "B.nii.gz"), "--overwrite")
    assert not (tmp_path / "stop" / "B_dicomseg.dcm").exists()
    going = _predict(model, study, out, "--export", "dicom-seg", "--keep-going")
    assert going.code == 2 and "1 of 3 case(s) failed (B)" in going.err and "2 others are written" in going.err
    assert (out / "B.nii.gz").read_bytes() == data[:len(data) // 2] and not (out / "B_dicomseg.dcm").exists()
    for case in "AC":
        ds = pydicom.dcmread(out / f"{case}_dicomseg.dcm")
        series = pydicom.dcmread(study / case / "000.dcm", stop_before_pixels=True).SeriesInstanceUID
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series


def test_export_added_to_empty_label_maps_without_the_empty_flag(study, tmp_path):
    """Label maps without foreground whose record lacks ``empty`` (medseg wrote none before it skipped empty
    exports): `predict --export` took them for maps with foreground, and the empty object was refused with exit 2,
    stopping the cohort; the voxels say there is nothing to export, as when predicting."""
    model, out = _model(tmp_path / "empty.pt", bias=(100.0, 0.0, 0.0)), tmp_path / "out"
    assert _predict(model, study, out).code == 0
    for case in "ABC":  # the record as an older medseg wrote it: the JSON comment extension without "empty"
        nimg = nib.load(out / f"{case}.nii.gz")
        nimg = nib.Nifti1Image(np.asarray(nimg.dataobj), None, nimg.header)
        for e in list(nimg.header.extensions):
            d = json.loads(e.get_content().decode())
            key = next(iter(d))
            d[key].pop("empty")
            nimg.header.extensions.remove(e)
            nimg.header.extensions.append(nib.nifti1.Nifti1Extension(e.get_code(), json.dumps(d).encode()))
        nib.save(nimg, out / f"{case}.nii.gz")
    res = _predict(model, study, out, "--export", "rtstruct")
    assert res.code == 0 and res.err.count("no foreground") == 3, res
    assert sorted(p.name for p in out.iterdir()) == ["A.nii.gz", "B.nii.gz", "C.nii.gz"]
