"""``medseg evaluate`` given an image where a label map belongs: refused with an example value, or (an MR image whose
grey values look like labels) refused as far more values than the reference holds; a few prediction values that no
reference holds are named in one warning line. Real MR/CT volumes from ../shared/data, synthetic arrays for the
thresholds."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest

from conftest import assert_clean_error, data_path, run_cli
from medseg.errors import InputError

HIPPO = "msd_hippocampus"
CASE = "hippocampus_001.nii.gz"


def _warning_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


def test_cli_refuses_an_mr_image_given_as_the_prediction(tmp_path):
    """The MR volume (uint8, 124 grey values) was scored as 125 'classes' with exit 0 and no word said."""
    img, lab = data_path(HIPPO, "imagesTr", CASE), data_path(HIPPO, "labelsTr", CASE)
    out = tmp_path / "out"
    res = run_cli("evaluate", "--pred", img, "--ref", lab, "-o", out, "-q")
    assert_clean_error(res, str(img), "values that its reference lacks", "image rather than a label map", "--labels")
    assert not out.exists()


def test_python_api_refuses_the_image_too(tmp_path):
    from medseg.evaluate.folder import evaluate_folder
    from medseg.evaluate.metrics import evaluate_case

    img, lab = data_path(HIPPO, "imagesTr", CASE), data_path(HIPPO, "labelsTr", CASE)
    with pytest.raises(InputError, match="image rather than a label map") as info:
        evaluate_folder(img, lab, progress=False)
    assert info.value.path == str(img)
    with pytest.raises(InputError, match="image rather than a label map"):
        evaluate_case(np.asanyarray(nib.load(str(img)).dataobj), np.asanyarray(nib.load(str(lab)).dataobj))


@pytest.mark.parametrize("side", ["pred", "ref"])
def test_ct_image_on_either_side_is_refused_with_an_example_value(tmp_path, side):
    ct, seg = data_path("totalseg_example", "example_ct_sm.nii.gz"), data_path("totalseg_example", "example_seg.nii.gz")
    low = int(np.asanyarray(nib.load(str(ct)).dataobj).min())
    pred, ref = (ct, seg) if side == "pred" else (seg, ct)
    res = run_cli("evaluate", "--pred", pred, "--ref", ref, "-o", tmp_path / "out", "-q")
    assert_clean_error(res, str(ct), "negative values", str(low))


def test_fractional_values_are_refused_with_an_example_value(tmp_path):
    lab = data_path(HIPPO, "labelsTr", CASE)
    ref = nib.load(str(lab))
    arr = np.asanyarray(ref.dataobj)
    probs = np.where(arr == 1, 0.25, arr).astype(np.float32)  # class 1 as a probability, class 2 as a label
    pred = tmp_path / CASE
    nib.save(nib.Nifti1Image(probs, ref.affine), str(pred))
    res = run_cli("evaluate", "--pred", pred, "--ref", lab, "-o", tmp_path / "out", "-q")
    assert_clean_error(res, str(pred), f"non-integer values such as 0.25 ({int((arr == 1).sum())} voxels")



def test_a_fractional_value_is_not_shown_as_a_whole_number():
    """A float map saved with scaling (0.9999999998 where 1 was meant) is rightly refused, but the message said
    "non-integer values such as 1", which reads as a contradiction."""
    from medseg.io.labels import integer_labels

    with pytest.raises(InputError, match=r"such as 0\.9999999998 "):
        integer_labels(np.array([0.0, 0.9999999998, 2.0]), path="seg.nii.gz")

def test_partial_reference_is_a_warning_not_a_refusal(tmp_path):
    """A 41-organ prediction against a reference that annotates one organ only: legitimate (it agrees with the
    reference where the reference says anything), so evaluated, with one warning line naming the extra values."""
    seg = data_path("totalseg_example", "example_seg.nii.gz")
    img = nib.load(str(seg))
    arr = np.asanyarray(img.dataobj)
    one = tmp_path / "ref" / "case.nii.gz"
    one.parent.mkdir()
    nib.save(nib.Nifti1Image((arr == 5).astype(np.uint8) * 5, img.affine, img.header), str(one))
    res = run_cli("evaluate", "--pred", seg, "--ref", one, "-o", tmp_path / "out", "-q", "--no-surface")
    assert res.code == 0, res.err
    lines = _warning_lines(res.err)
    n_extra = len(np.unique(arr)) - 2  # background and the annotated organ
    assert len(lines) == 1 and lines[0].startswith("medseg: warning:"), res.err
    assert f"({n_extra} values)" in lines[0] and "no reference" in lines[0] and "--labels" in lines[0]
    assert len(json.loads((tmp_path / "out" / "metrics.json").read_text())["mean"]) == n_extra + 1


def test_empty_reference_is_a_warning_not_a_refusal(tmp_path):
    """A 41-organ label map against an empty reference (nothing annotated in this case) is scored, not called an
    image: an empty reference cannot show that the prediction is one."""
    seg = data_path("totalseg_example", "example_seg.nii.gz")
    img = nib.load(str(seg))
    empty = tmp_path / "ref" / "case.nii.gz"
    empty.parent.mkdir()
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine, img.header), str(empty))
    res = run_cli("evaluate", "--pred", seg, "--ref", empty, "-o", tmp_path / "out", "-q", "--no-surface")
    assert res.code == 0, res.err
    assert len(_warning_lines(res.err)) == 1


def _case(root, name, ref, pred):
    for side, arr in (("ref", ref), ("pred", pred)):
        (root / side).mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(np.asarray(arr, np.uint8), np.eye(4)), str(root / side / f"{name}.nii.gz"))


def test_cohort_warning_names_only_values_that_no_reference_holds(tmp_path):
    """Value 2 is in case b's reference (a false positive in case a, not a mistake); 5 and 7 are in no reference."""
    from medseg.evaluate.folder import evaluate_folder
    from medseg.evaluate.metrics import UnreferencedLabelsWarning

    base = np.zeros((8, 8, 8), np.uint8)
    base[2:5, 2:5, 2:5] = 1
    pred_a, ref_b, pred_b = base.copy(), base.copy(), base.copy()
    pred_a[6, 6, 6], pred_a[0, 0, 0] = 2, 5
    ref_b[6:8, 6:8, 6:8] = pred_b[6:8, 6:8, 6:8] = 2
    pred_b[0, 7, 0] = 7
    _case(tmp_path, "a", base, pred_a)
    _case(tmp_path, "b", ref_b, pred_b)
    with pytest.warns(UnreferencedLabelsWarning) as caught:
        rep = evaluate_folder(tmp_path / "pred", tmp_path / "ref", progress=False, surface=False)
    msgs = [str(w.message) for w in caught if issubclass(w.category, UnreferencedLabelsWarning)]
    assert len(msgs) == 1 and "value(s) 5, 7 appear in no reference (case a and 1 more)" in msgs[0], msgs
    assert set(rep["mean"]) == {"label_1", "label_2", "label_5", "label_7"}  # still scored, as documented
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreferencedLabelsWarning)  # named classes: nothing to warn of
        evaluate_folder(tmp_path / "pred", tmp_path / "ref", progress=False, surface=False,
                        labels={1: "a", 2: "b", 5: "c", 7: "d"})


def test_cli_prints_the_cohort_warning_as_one_line(tmp_path):
    base = np.zeros((6, 6, 6), np.uint8)
    base[1:4, 1:4, 1:4] = 1
    pred = base.copy()
    pred[5, 5, 5] = 9
    _case(tmp_path, "a", base, pred)
    res = run_cli("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "-o", tmp_path / "out", "-q")
    assert res.code == 0, res.err
    assert _warning_lines(res.err) == ["medseg: warning: prediction value(s) 9 appear in no reference (case a): "
                                       "each is scored as a class with dice 0; name the classes with --labels "
                                       "dataset.json"]


def _scattered(n_extra: int, agree: bool) -> tuple[np.ndarray, np.ndarray]:
    """Reference with classes 1 and 2; a prediction holding ``n_extra`` more values, one voxel each, outside them,
    and the reference's classes where they are (``agree``) or nowhere."""
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[:3], ref[3:5] = 1, 2
    pred = ref.copy() if agree else np.zeros_like(ref)
    pred[6:].flat[:n_extra] = np.arange(3, 3 + n_extra)
    return pred, ref


def test_refusal_threshold():
    from medseg.evaluate.metrics import MAX_UNREFERENCED, UnreferencedLabelsWarning, evaluate_case

    with pytest.warns(UnreferencedLabelsWarning, match=f"({MAX_UNREFERENCED} values)"):
        evaluate_case(*_scattered(MAX_UNREFERENCED, agree=False), surface=False)  # at the limit: warned, scored
    with pytest.raises(InputError, match=f"holds {MAX_UNREFERENCED + 1} values .* matches 0% "):
        evaluate_case(*_scattered(MAX_UNREFERENCED + 1, agree=False), surface=False)
    with pytest.warns(UnreferencedLabelsWarning):  # over the limit, but the reference's classes are predicted
        res = evaluate_case(*_scattered(MAX_UNREFERENCED + 1, agree=True), surface=False)
    assert res["classes"]["label_1"]["dice"] == 1.0 and len(res["classes"]) == MAX_UNREFERENCED + 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # classes named: neither refused nor warned
        pred, ref = _scattered(MAX_UNREFERENCED + 1, agree=False)
        evaluate_case(pred, ref, labels=range(1, MAX_UNREFERENCED + 4), surface=False)
