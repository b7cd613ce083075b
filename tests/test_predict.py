"""Prediction (issue 4): output on exactly the input's grid (NIfTI, anisotropic oblique, DICOM), folder runs that
skip finished cases, shards, probabilities, post-processing, clean errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import assert_clean_error, data_path, run_cli

HIPPO_IMG = ("msd_hippocampus", "imagesTr")


def make_model(path: Path, **kw) -> Path:
    """A model artifact with random weights (geometry tests do not need a trained network)."""
    from medseg.plan.plan import Plan
    from medseg.train.artifact import build_from_plan, save_model

    torch.manual_seed(0)
    base = dict(channels=["MRI"], labels={0: "background", 1: "a", 2: "b"}, patch_size=[32, 32, 32],
                base_filters=4, max_filters=16, target_spacing=[1.0, 1.0, 1.0])
    plan = Plan(**{**base, **kw}).validate()
    return save_model(path, plan, build_from_plan(plan).state_dict())


def oblique_copy(src: Path, dst: Path, degrees: float = 20.0) -> Path:
    """The real voxels of ``src`` with its affine rotated about two axes (a non-axis-aligned scan)."""
    img = nib.load(src)
    a, b = np.radians(degrees), np.radians(degrees / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = img.affine.copy()
    aff[:3, :3] = rz @ rx @ aff[:3, :3]
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), aff), dst)
    return dst


def assert_same_grid(pred: Path, ref: Path):
    p, r = nib.load(pred), nib.load(ref)
    assert p.shape == r.shape[:3]
    assert np.allclose(p.affine, r.affine, atol=1e-5), (p.affine, r.affine)
    # and as ITK sees it (LPS geometry, independent of nibabel's affine handling)
    ps, rs = sitk.ReadImage(str(pred)), sitk.ReadImage(str(ref))
    assert np.allclose(ps.GetOrigin(), rs.GetOrigin(), atol=1e-4)
    assert np.allclose(ps.GetDirection(), rs.GetDirection(), atol=1e-5)
    assert np.allclose(ps.GetSpacing(), rs.GetSpacing(), atol=1e-5)
    assert p.get_data_dtype() == np.uint8
    for code in ("sform_code", "qform_code"):  # what the affine means (scanner, aligned, ...) is kept too
        if r.header[code] > 0:
            assert p.header[code] == r.header[code], code


@pytest.mark.parametrize("spacing", [[1.0, 1.0, 1.0], [1.3, 0.8, 1.7]])
def test_nifti_output_has_input_grid(tmp_path, spacing):
    src = data_path(*HIPPO_IMG, "hippocampus_001.nii.gz")
    model = make_model(tmp_path / "model.pt", target_spacing=spacing)
    res = run_cli("predict", "-m", model, "-i", src, "-o", tmp_path / "out", "-q")
    assert res.code == 0, res.err
    assert_same_grid(tmp_path / "out" / "hippocampus_001.nii.gz", src)


@pytest.mark.parametrize("dims", [3, 2])
def test_anisotropic_oblique_ct(tmp_path, dims):
    """Real CT voxels (0.8 x 0.8 x 5 mm), affine rotated off the axes; 3D and 2D (slice-wise) plans."""
    src = oblique_copy(data_path("ct_spleen_sample", "sub-spleen2", "ct", "sub-spleen2_ct.nii.gz"),
                       tmp_path / "ct_oblique.nii.gz")
    kw = dict(channels=["CT"], normalisation=[{"scheme": "ct", "clip": (-100.0, 300.0), "mean": 50.0, "std": 80.0}],
              labels={0: "background", 1: "spleen"})
    from medseg.plan.plan import Normalisation

    kw["normalisation"] = [Normalisation(**kw["normalisation"][0])]
    if dims == 3:
        model = make_model(tmp_path / "m.pt", target_spacing=[1.6, 1.6, 5.0], patch_size=[48, 48, 16], **kw)
    else:
        model = make_model(tmp_path / "m.pt", target_spacing=[1.6, 1.6, 5.0], patch_size=[64, 64],
                           spatial_dims=2, **kw)
    res = run_cli("predict", "-m", model, "-i", src, "-o", tmp_path / "out", "--probabilities", "-q")
    assert res.code == 0, res.err
    assert_same_grid(tmp_path / "out" / "ct_oblique.nii.gz", src)
    probs = nib.load(tmp_path / "out" / "ct_oblique_probs.nii.gz")
    assert probs.header["sform_code"] == nib.load(src).header["sform_code"] == 2  # nibabel's default: aligned
    lab = np.asarray(nib.load(tmp_path / "out" / "ct_oblique.nii.gz").dataobj)
    p = np.asarray(probs.dataobj)
    assert p.shape == (*lab.shape, 2) and np.allclose(p.sum(-1), 1, atol=1e-4)
    assert np.array_equal(p.argmax(-1), lab)


def test_dicom_series_input(tmp_path):
    """A DICOM series folder: the label map lies on the series' grid as SimpleITK reads it."""
    folder = data_path("dicom", "mr_study", "13_HCropVolume")
    model = make_model(tmp_path / "m.pt", target_spacing=[1.2, 1.2, 1.2])
    res = run_cli("predict", "-m", model, "-i", folder, "-o", tmp_path / "out", "-q")
    assert res.code == 0, res.err
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder)))
    ref = r.Execute()
    p = sitk.ReadImage(str(tmp_path / "out" / f"{folder.name}.nii.gz"))
    assert p.GetSize() == ref.GetSize()
    assert np.allclose(p.GetOrigin(), ref.GetOrigin(), atol=1e-3)
    assert np.allclose(p.GetDirection(), ref.GetDirection(), atol=1e-4)
    assert np.allclose(p.GetSpacing(), ref.GetSpacing(), atol=1e-4)


def assert_on_series_grid(pred: Path, folder: Path, uid: str = ""):
    """``pred`` lies on the grid of the DICOM series ``uid`` (or the only one) of ``folder`` as medseg's loader
    (RAS affine) and SimpleITK's ImageSeriesReader (LPS origin, direction, spacing) read it."""
    from medseg.io.readers import read_image

    ref = read_image(folder, uid or None)
    p = nib.load(pred)
    assert p.shape == ref.shape and p.get_data_dtype() == np.uint8
    np.testing.assert_allclose(p.affine, ref.affine, atol=1e-4)
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder), uid))
    s, ps = r.Execute(), sitk.ReadImage(str(pred))
    assert ps.GetSize() == s.GetSize()
    np.testing.assert_allclose(ps.GetOrigin(), s.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(ps.GetDirection(), s.GetDirection(), atol=1e-4)
    np.testing.assert_allclose(ps.GetSpacing(), s.GetSpacing(), atol=1e-4)


def coarse_model(path: Path) -> Path:
    """A random-weight model on a coarse grid: a 512x512x22 series is a few windows (fast on a CPU)."""
    return make_model(path, target_spacing=[7.0, 7.0, 6.5], patch_size=[32, 32, 16], max_filters=8)


def test_anisotropic_oblique_dicom_series(tmp_path):
    """Real T1 post-contrast series, 0.43 x 0.43 x 6.5 mm, slices tilted off the axes: the label map has the
    series' shape and affine as medseg's DICOM loader and SimpleITK's ImageSeriesReader give them."""
    folder = data_path("dicom", "mr_study", "12-T1post-05670")
    res = run_cli("predict", "-m", coarse_model(tmp_path / "m.pt"), "-i", folder, "-o", tmp_path / "out", "-q")
    assert res.code == 0, res.err
    pred = tmp_path / "out" / "12-T1post-05670.nii.gz"
    aff = nib.load(pred).affine
    cosines = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0)
    assert not np.allclose(np.abs(cosines), np.round(np.abs(cosines)), atol=1e-2)  # really non-axis-aligned
    np.testing.assert_allclose(nib.load(pred).header.get_zooms(), [0.4297, 0.4297, 6.5], atol=1e-3)
    assert nib.load(pred).shape == (512, 512, 22)
    assert_on_series_grid(pred, folder)


def test_folder_of_series_subfolders_shard_and_skip(tmp_path):
    """A study folder with one series per subfolder: one output per series, named after its folder; shards
    split the series, a rerun skips them all and changes nothing."""
    study = data_path("dicom", "mr_study")
    model, out = coarse_model(tmp_path / "m.pt"), tmp_path / "out"
    names = sorted(p.name for p in study.iterdir() if p.is_dir())
    res = run_cli("predict", "-m", model, "-i", study, "-o", out, "--shard", "0/2", "-q")
    assert res.code == 0, res.err
    assert len(list(out.iterdir())) == 3
    assert run_cli("predict", "-m", model, "-i", study, "-o", out, "--shard", "1/2", "-q").code == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{n}.nii.gz" for n in names]
    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    res = run_cli("predict", "-m", model, "-i", study, "-o", out, "-q")
    assert res.code == 0 and "skipped 5" in res.out, res
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert_on_series_grid(out / "13_HCropVolume.nii.gz", study / "13_HCropVolume")


def flat_study(dst: Path) -> tuple[Path, dict[str, str]]:
    """One folder holding the files of two real series (MR crop and a 3-slice CT); returns it and name -> UID."""
    from medseg.io.dicom import discover_series

    dst.mkdir()
    uids = {}
    for name, src in (("HippoCrop", data_path("dicom", "mr_study", "13_HCropVolume")),
                      ("2_CT", data_path("dicom", "dcmqi_segmentations", "ct-3slice"))):
        for f in sorted(src.iterdir()):
            (dst / f"{name}_{f.name}").symlink_to(f.resolve())
        uids[name] = discover_series(src)[0].series_uid
    return dst, uids


def test_flat_folder_of_series_and_series_option(tmp_path):
    """Several series' files in one folder: ``--series UID`` predicts that one, named <SeriesNumber>_<description>
    (the crop has no SeriesNumber, the CT no description); the folder run predicts the other and skips it."""
    study, uids = flat_study(tmp_path / "flat")
    model, out = coarse_model(tmp_path / "m.pt"), tmp_path / "out"
    res = run_cli("predict", "-m", model, "-i", study, "-o", out, "--series", uids["HippoCrop"], "-q")
    assert res.code == 0, res.err
    assert [p.name for p in out.iterdir()] == ["HippoCrop.nii.gz"]
    res = run_cli("predict", "-m", model, "-i", study, "-o", out, "-q")
    assert res.code == 0 and "wrote 1 prediction(s)" in res.out and "skipped 1" in res.out, res
    assert sorted(p.name for p in out.iterdir()) == ["2_CT.nii.gz", "HippoCrop.nii.gz"]
    for name, uid in uids.items():
        assert_on_series_grid(out / f"{name}.nii.gz", study, uid)
    res = run_cli("predict", "-m", model, "-i", data_path("dicom", "mr_study"), "-o", tmp_path / "o2",
                  "--series", "4", "-q")  # by index, as `medseg info` lists the series
    assert res.code == 0, res.err
    assert [p.name for p in (tmp_path / "o2").iterdir()] == ["13_HCropVolume.nii.gz"]


def test_bad_series_value_is_clean(tmp_path):
    """A --series that picks nothing: exit 2, one line naming the input and the problem, nothing written."""
    study = data_path("dicom", "mr_study")
    nifti = data_path(*HIPPO_IMG, "hippocampus_001.nii.gz")
    model = make_model(tmp_path / "m.pt")
    (tmp_path / "niftis").mkdir()
    (tmp_path / "niftis" / nifti.name).symlink_to(nifti)
    for inp, series, needles in ((study, "99", ["mr_study", "index 99 out of range"]),
                                 (study, "1.2.3.4", ["mr_study", "no series with SeriesInstanceUID 1.2.3.4"]),
                                 (nifti, "0", [nifti.name, "not a DICOM file"]),
                                 (tmp_path / "niftis", "0", ["niftis", "no DICOM image series"])):
        out = tmp_path / f"out_{series}_{inp.name}"
        assert_clean_error(run_cli("predict", "-m", model, "-i", inp, "-o", out, "--series", series), *needles)
        assert not out.exists()



def test_folder_with_a_broken_series_writes_nothing(tmp_path):
    """A series with a missing slice among good ones and a screenshot: exit 2 naming the broken series before any
    series is predicted, in one line (the note on the skipped screenshot comes only once the input passed)."""
    import pydicom

    study, _ = flat_study(tmp_path / "flat")
    from medseg.io.dicom import discover_series
    from medseg.infer.cohort import list_cases

    crop = discover_series(data_path("dicom", "mr_study", "13_HCropVolume"))[0]
    shot = pydicom.dcmread(crop.files[0])
    del shot.ImagePositionPatient
    shot.SeriesInstanceUID, shot.SeriesDescription = pydicom.uid.generate_uid(), "screenshot"
    shot.save_as(study / "screenshot.dcm")
    (study / f"HippoCrop_{crop.files[len(crop.files) // 2].name}").unlink()  # a gap in the middle of the stack
    out = tmp_path / "out"
    res = run_cli("predict", "-m", coarse_model(tmp_path / "m.pt"), "-i", study, "-o", out)
    assert_clean_error(res, "HippoCrop", "not a regular volume")
    assert not out.exists()
    notes: list[str] = []
    assert len(list_cases(study, notes=notes)) == 2
    assert len(notes) == 1 and "skipped series" in notes[0] and "screenshot" in notes[0]


def test_series_names_that_differ_only_in_case_are_told_apart(tmp_path):
    """Folders T1 and t1 would write one file on Windows and macOS: both names get their UID's digits, spelled
    as they were."""
    from types import SimpleNamespace

    from medseg.infer.cohort import series_case_names

    series = [SimpleNamespace(index=i, folder=tmp_path / name, series_uid=f"1.2.3.{uid}", description="",
                              modality="MR", meta={}) for i, (name, uid) in enumerate((("T1", 111), ("t1", 222)))]
    for s in series:
        s.folder.mkdir()
    assert series_case_names(series, tmp_path) == {0: "T1_123111", 1: "t1_123222"}


def test_tta_without_flip_axes_warns_and_records(tmp_path):
    """``--tta`` (or the plan's ``tta``) on a model trained without mirroring: one warning line, the labels of
    a prediction without TTA, and the output's NIfTI descrip says TTA was not applied."""
    src = data_path(*HIPPO_IMG, "hippocampus_001.nii.gz")
    fast = dict(bf16=False, target_spacing=[2.0, 2.0, 2.0])  # one window per pass
    model = make_model(tmp_path / "m.pt", **fast)
    plain = run_cli("predict", "-m", model, "-i", src, "-o", tmp_path / "plain", "--no-tta", "-q")
    assert plain.code == 0 and plain.err == "", plain
    for args, who, model_ in ((["--tta"], "--tta", model),
                              ([], "plan tta: true", make_model(tmp_path / "t.pt", tta=True, **fast))):
        res = run_cli("predict", "-m", model_, "-i", src, "-o", tmp_path / who, *args, "-q")
        assert res.code == 0, res.err
        lines = res.err.strip().splitlines()
        assert len(lines) == 1 and who in lines[0] and "flip_axes is empty" in lines[0], res.err
        out = nib.load(tmp_path / who / src.name)
        assert b"no TTA" in out.header["descrip"].tobytes()
        assert np.array_equal(np.asarray(out.dataobj), np.asarray(nib.load(tmp_path / "plain" / src.name).dataobj))
    flipped = make_model(tmp_path / "f.pt", augment={"flip_axes": [0]}, **fast)
    res = run_cli("predict", "-m", flipped, "-i", src, "-o", tmp_path / "flip", "--tta", "-q")
    assert res.code == 0 and res.err == "", res
    assert b"axes [0]" in nib.load(tmp_path / "flip" / src.name).header["descrip"].tobytes()


def test_predict_image_resolves_tta_as_the_cli_does(tmp_path):
    """``predict_image(tta=True)`` (or the plan's ``tta``) on a model trained without mirroring: one warning
    naming the caller's line, and the labels of a prediction without TTA, as ``medseg predict --tta`` does."""
    import warnings

    from medseg.infer.cohort import resolve_tta as cli_resolve
    from medseg.infer.predict import predict_image, resolve_tta
    from medseg.io.readers import read_image
    from medseg.train.artifact import load_model

    src = data_path(*HIPPO_IMG, "hippocampus_001.nii.gz")
    art = load_model(make_model(tmp_path / "m.pt", bf16=False, target_spacing=[2.0, 2.0, 2.0]))
    net, image = art.build(), read_image(src)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no TTA asked for: no warning
        plain = predict_image(net, art.plan, image, tta=False)[0].array
    assert cli_resolve(art.plan, True) == resolve_tta(art.plan, True, warn=lambda line: None)
    for tta, who in ((True, "tta=True"), (None, "plan tta: true")):
        art.plan.tta = tta is None
        with pytest.warns(UserWarning, match="flip_axes is empty") as caught:
            lab = predict_image(net, art.plan, image, tta=tta)[0].array
        assert len(caught) == 1 and caught[0].message.args[0].startswith(who)
        assert caught[0].filename == __file__  # attributed to the caller, not to medseg
        assert np.array_equal(lab, plain)

def test_folder_skip_shard_and_atomic(tmp_path):
    from test_dataset import tiny_dataset

    ds = tiny_dataset(tmp_path / "ds", 5)
    model = make_model(tmp_path / "m.pt")
    out = tmp_path / "out"
    assert run_cli("predict", "-m", model, "-i", ds / "imagesTr", "-o", out, "--shard", "0/2", "-q").code == 0
    first = {p.name for p in out.iterdir()}
    assert run_cli("predict", "-m", model, "-i", ds / "imagesTr", "-o", out, "--shard", "1/2", "-q").code == 0
    allp = {p.name for p in out.iterdir()}
    names = {p.name for p in (ds / "imagesTr").iterdir()}
    assert allp == names and len(first) == 3
    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    res = run_cli("predict", "-m", model, "-i", ds / "imagesTr", "-o", out, "-q")
    assert res.code == 0 and "skipped 5" in res.out
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_bad_inputs_are_clean(tmp_path):
    model = make_model(tmp_path / "m.pt")
    bad = tmp_path / "in" / "broken.nii.gz"
    bad.parent.mkdir()
    good = data_path(*HIPPO_IMG, "hippocampus_001.nii.gz")
    bad.write_bytes(good.read_bytes()[:2000])  # truncated gzip
    res = run_cli("predict", "-m", model, "-i", bad.parent, "-o", tmp_path / "out")
    assert_clean_error(res, "broken.nii.gz")
    assert not (tmp_path / "out").exists()  # not even an empty folder
    assert_clean_error(run_cli("predict", "-m", tmp_path / "nomodel", "-i", good, "-o", tmp_path / "o2"), "nomodel")
    assert_clean_error(run_cli("predict", "-m", model, "-i", good, "-o", tmp_path / "o3", "--shard", "3/2"), "shard")
    notmodel = tmp_path / "x.pt"
    torch.save({"a": 1}, notmodel)
    assert_clean_error(run_cli("predict", "-m", notmodel, "-i", good, "-o", tmp_path / "o4"), "not a medseg model")


def test_inputs_and_options_that_used_to_end_as_internal_errors(tmp_path):
    """Each once gave exit 1 (or exit 0 and an all-background map for the NaN image); now one line, exit 2, and no
    output folder left behind."""
    model = make_model(tmp_path / "m.pt")
    good = data_path(*HIPPO_IMG, "hippocampus_001.nii.gz")
    nimg = nib.load(good)
    vol = np.asarray(nimg.dataobj).astype(np.float32)
    vol[3, 4, 5], vol[0, 0, 0] = np.nan, np.inf
    nib.save(nib.Nifti1Image(vol, nimg.affine), tmp_path / "nan.nii.gz")
    nib.save(nib.Nifti1Image(vol[:, :, 0], nimg.affine), tmp_path / "flat.nii.gz")
    (tmp_path / "file").write_text("x")
    cases = [(("-i", tmp_path / "nan.nii.gz"), ("nan.nii.gz", "NaN")),
             (("-i", tmp_path / "flat.nii.gz"), ("flat.nii.gz", "3D")),
             (("-i", good, "--overlap", "1.5"), ("--overlap",)),
             (("-i", good, "--min-size", "-3"), ("--min-size",))]
    for args, needles in cases:
        out = tmp_path / "out"
        assert_clean_error(run_cli("predict", "-m", model, "-o", out, *args, "-q"), *needles)
        assert not out.exists(), args
    assert_clean_error(run_cli("predict", "-m", model, "-i", good, "-o", tmp_path / "file"), "file", "folder")
    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / good.name).symlink_to(good)
    assert_clean_error(run_cli("predict", "-m", model, "-i", folder, "-o", folder), "input folder")


def test_a_pickle_is_refused_without_advice_to_unpickle_it(tmp_path):
    import pickle

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"x": print}))  # any object beyond tensors and containers
    res = run_cli("predict", "-m", evil, "-i", data_path(*HIPPO_IMG, "hippocampus_001.nii.gz"), "-o", tmp_path / "o")
    assert_clean_error(res, "evil.pt", "never unpickled")
    assert "weights_only" not in res.err


def test_resampling_back_puts_a_sphere_where_it_is():
    """Probabilities of a sphere on a coarse grid come back on the fine grid where the analytic sphere is."""
    from medseg.infer.native import PlaneResampler

    coarse, fine = 20, 50
    def sphere(n):
        c = (np.arange(n) + 0.5) / n - 0.5
        z, y, x = np.meshgrid(c, c, c, indexing="ij")
        return (x**2 + y**2 + z**2) < 0.3**2
    s = sphere(coarse).astype(np.float32)
    probs = torch.from_numpy(np.stack([1 - s, s]))
    out = PlaneResampler(probs.shape[1:], (fine,) * 3, 2)
    out.add(probs, 0)
    lab = out.labels
    ref = sphere(fine)
    dice = 2 * np.sum((lab == 1) & ref) / (np.sum(lab == 1) + ref.sum())
    assert dice > 0.95


def test_postprocessing_matches_skimage():
    from skimage.measure import label as cc_label
    from skimage.morphology import remove_small_objects

    from medseg.infer.predict import postprocess_labels

    rng = np.random.default_rng(1)
    lab = (rng.random((30, 30, 30)) > 0.93).astype(np.int64)
    lab[5:12, 5:12, 5:12] = 1
    out = postprocess_labels(lab, (1.0, 2.0, 1.0), False, 10.0)  # 10 mm³ = 5 voxels of 2 mm³
    # medseg's components use full connectivity (26-neighbourhood in 3D), as nnU-Net's clean-up does
    try:  # removes objects of <= 4 voxels (< 5 voxels = < 10 mm³)
        ref = remove_small_objects(lab.astype(bool), max_size=4, connectivity=3)
    except TypeError:  # scikit-image < 0.26
        ref = remove_small_objects(lab.astype(bool), min_size=5, connectivity=3)
    assert np.array_equal(out == 1, ref)
    big = postprocess_labels(lab, (1, 1, 1), True, 0)
    cc = cc_label(lab == 1, connectivity=3)
    sizes = np.bincount(cc.ravel())[1:]
    assert np.array_equal(big == 1, cc == 1 + int(np.argmax(sizes)))


def test_dicom_input_export_dicom_seg(tmp_path, monkeypatch):
    """--export dicom-seg on a DICOM series writes a SEG that references the input series, found by one scan of
    the folder (the export reuses the series the case listing discovered)."""
    import pydicom

    import medseg.io.dicom as dicom

    scans, discover = [], dicom.discover_series
    monkeypatch.setattr(dicom, "discover_series", lambda *a, **k: scans.append(a) or discover(*a, **k))
    folder = data_path("dicom", "dcmqi_segmentations", "ct-3slice")
    model = coarse_model(tmp_path / "m.pt")
    res = run_cli("predict", "-m", model, "-i", folder, "-o", tmp_path / "out", "--export", "dicom-seg", "-q")
    if res.code != 0 and "empty" in res.err.lower():
        pytest.skip(f"random model predicted only background: {res.err}")
    assert res.code == 0, res.err
    segs = list((tmp_path / "out").glob("*.dcm"))
    assert len(segs) == 1
    ds = pydicom.dcmread(segs[0])
    src = pydicom.dcmread(next(p for p in folder.rglob("*") if p.is_file()), stop_before_pixels=True)
    assert ds.Modality == "SEG"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert (tmp_path / "out" / f"{folder.name}.nii.gz").is_file()
    assert len(scans) == 1, scans


@pytest.mark.parametrize("dims,spacing,native", [(3, [1.3, 0.8, 1.7], [1.0, 1.2, 0.9]),
                                                 (2, [0.7, 0.7, 2.5], [1.0, 1.2, 0.9]),
                                                 (2, [0.7, 0.7, 2.5], [1.0, 0.9, 1.2])])  # 2D: slices along y, z
def test_streamed_prediction_equals_resizing_the_whole_volume(tmp_path, dims, spacing, native):
    """Labels and probabilities of ``predict_labels`` (handed back plane by plane) equal predicting the whole
    network-grid volume and resizing all classes at once (the straightforward, memory-hungry way)."""
    import torch.nn.functional as F

    from medseg.infer.predict import predict_labels
    from medseg.infer.sliding_window import sliding_window_predict
    from medseg.train.artifact import load_model
    from medseg.train.preprocess import preprocess

    img = nib.load(data_path(*HIPPO_IMG, "hippocampus_001.nii.gz"))
    arr = np.asarray(img.dataobj, np.float32)[None]
    kw = dict(spatial_dims=2, patch_size=[32, 32]) if dims == 2 else {}
    art = load_model(make_model(tmp_path / "m.pt", target_spacing=spacing, bf16=False, **kw))
    net = art.build()
    lab, prob = predict_labels(net, art.plan, arr, native, probabilities=True, device="cpu")
    x, _ = preprocess(arr, native, art.plan)
    if dims == 2:
        ax = art.plan.slice_axis
        net2 = lambda b: net(b[:, :, 0])[:, :, None]  # noqa: E731
        p = sliding_window_predict(net2, x.movedim(ax + 1, 1), [1, 32, 32], device="cpu", precision="fp32")
        p = p.movedim(1, ax + 1)
    else:
        p = sliding_window_predict(net, x, [32, 32, 32], device="cpu", precision="fp32")
    ref = F.interpolate(p[None], size=arr.shape[1:], mode="trilinear", align_corners=False)[0]
    assert lab.shape == arr.shape[1:] and prob.shape == (3, *arr.shape[1:])
    assert all(prob[k].flags.f_contiguous for k in range(3))  # the file in the input's axis order (NIfTI's)
    np.testing.assert_allclose(prob, ref.numpy(), atol=1e-5)
    top2 = torch.topk(ref, 2, dim=0).values
    clear = (top2[0] - top2[1] > 1e-4).numpy()
    np.testing.assert_array_equal(lab[clear], ref.argmax(0).numpy()[clear])


def test_tta_mirrors_only_the_axes_the_model_was_trained_to_mirror(tmp_path):
    """``--tta`` averages over the plan's flip axes only: mirroring an axis the model never saw mirrored would
    swap left/right-defined classes (RESULTS: hippocampus anterior/posterior)."""
    from medseg.infer.predict import predict_labels
    from medseg.train.artifact import load_model

    arr = np.asarray(nib.load(data_path(*HIPPO_IMG, "hippocampus_001.nii.gz")).dataobj, np.float32)[None]
    art = load_model(make_model(tmp_path / "m.pt", bf16=False))
    net = art.build()
    plain = predict_labels(net, art.plan, arr, [1, 1, 1], tta=False, probabilities=True, device="cpu")[1]
    art.plan.augment["flip_axes"] = []
    with pytest.warns(UserWarning, match="flip_axes is empty"):
        no_axes = predict_labels(net, art.plan, arr, [1, 1, 1], tta=True, probabilities=True, device="cpu")[1]
    assert np.array_equal(no_axes, plain)
    art.plan.augment["flip_axes"] = [0]
    mirrored = predict_labels(net, art.plan, arr, [1, 1, 1], tta=True, probabilities=True, device="cpu")[1]
    assert not np.allclose(mirrored, plain, atol=1e-4)
    from medseg.infer.sliding_window import sliding_window_predict
    from medseg.train.preprocess import preprocess

    ref = sliding_window_predict(net, preprocess(arr, [1, 1, 1], art.plan)[0], [32, 32, 32], tta=[0],
                                 device="cpu", precision="fp32")
    np.testing.assert_allclose(mirrored, ref.numpy(), atol=1e-5)  # float noise of another batch size


@pytest.mark.parametrize("extra", [[], ["--overwrite"], ["--probabilities"]])
def test_an_output_that_would_replace_the_input_is_refused_as_such(tmp_path, extra):
    """``-i DIR/case.nii.gz -o DIR``: the input is not called an existing output, nor overwritten with --overwrite."""
    folder = tmp_path / "in"
    folder.mkdir()
    case = folder / "case.nii.gz"
    case.write_bytes(data_path(*HIPPO_IMG, "hippocampus_001.nii.gz").read_bytes())
    before = case.read_bytes()
    res = run_cli("predict", "-m", make_model(tmp_path / "m.pt"), "-i", case, "-o", folder, "-q", *extra)
    assert_clean_error(res, "case.nii.gz", "would replace the input")
    assert "existing output" not in res.err
    assert case.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["case.nii.gz"]
