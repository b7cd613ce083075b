"""Export and import on series whose slices are not on a plain regular grid (gantry tilt, uneven spacing), and
nearest-neighbour ties that must not depend on how a label map stores its axes.

Synthetic DICOM series (pydicom, a few 16 x 16 slices) with the geometry real scanners write:
gantry tilt (each slice shifted in-plane by a constant step) and uneven slice spacing. Expected values
come from pydicom + numpy geometry and SimpleITK, never from medseg's own output. No real data needed.
"""

from __future__ import annotations


import numpy as np
import pytest

from _dicom_series import write_ct_series
from medseg.errors import InputError
from medseg.export import export_segmentation
from medseg.io.image import LPS_TO_RAS, Image

N = 16  # rows = columns
PS = 1.0  # pixel spacing (mm)


def _write_series(folder, positions, iop=(1, 0, 0, 0, 1, 0)):
    """CT slices at the given LPS Image Position (Patient)s; returns the SOP UIDs in the order given."""
    dss = write_ct_series(folder, [np.zeros((N, N), np.int16)] * len(positions), positions, iop, (PS, PS))
    return [str(ds.SOPInstanceUID) for ds in dss]


def _tilted(tmp_path):
    """8 axial slices 2 mm apart, each shifted 0.5 mm posterior (a gantry tilt of 14 degrees)."""
    pos = [(-8.0, -8.0 + 0.5 * k, 2.0 * k) for k in range(8)]
    return tmp_path / "tilted", pos, _write_series(tmp_path / "tilted", pos)


def _uneven(tmp_path):
    """8 axial slices with one 3 mm gap among 2 mm steps."""
    z = [0, 2, 4, 6, 9, 11, 13, 15]
    pos = [(-8.0, -8.0, float(v)) for v in z]
    return tmp_path / "uneven", pos, _write_series(tmp_path / "uneven", pos)


def _box_on_slices(shape):
    """An asymmetric label array [column, row, slice] given per reference slice."""
    lab = np.zeros(shape, np.uint8)
    lab[3:9, 5:12, 2:6] = 1
    lab[10:13, 2:4, 3:7] = 2
    return lab


def _label_image_covering(positions, lab):
    """The same labels as an Image on a regular 0.5 mm grid holding every slice centre (a prediction's grid):
    each slice centre is a voxel centre, so nearest-neighbour sampling back is exact."""
    pos = np.asarray(positions, float)
    lo = pos.min(0)
    hi = pos.max(0) + [(N - 1) * PS, (N - 1) * PS, 0]
    step = 0.5
    shape = tuple(int(round((hi[a] - lo[a]) / step)) + 1 for a in range(3))
    arr = np.zeros(shape, np.uint8)
    for k, p in enumerate(pos):
        for i in range(N):
            for j in range(N):
                w = p + [i * PS, j * PS, 0]
                idx = tuple(int(round(v)) for v in (w - lo) / step)
                arr[idx] = lab[i, j, k]
    aff_lps = np.diag([step, step, step, 1.0])
    aff_lps[:3, 3] = lo
    return Image(arr, LPS_TO_RAS @ aff_lps)


@pytest.mark.parametrize("make", [_tilted, _uneven], ids=["gantry-tilt", "uneven-spacing"])
def test_dicom_seg_round_trip_on_a_tilted_or_uneven_series(tmp_path, make):
    """Export then import must give back the mask on the reference grid. The export places every frame
    on its slice (highdicom's per-SOP reader agrees), but the importer needs highdicom's regular volume
    and refuses medseg's own SEG: 'the DICOM-SEG frames do not form one volume'."""
    import highdicom as hd

    from medseg.export.importers import import_masks

    folder, pos, uids = make(tmp_path)
    lab = _box_on_slices((N, N, len(pos)))
    out = export_segmentation(_label_image_covering(pos, lab), folder, "dicom-seg", tmp_path / "seg.dcm")
    seg = hd.seg.segread(str(out))  # independent: frames looked up by the SOP instance they reference
    arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2],
                                            assert_missing_frames_are_empty=True)
    for c, v in enumerate((1, 2)):
        assert np.array_equal(np.transpose(arr[..., c], (2, 1, 0)) > 0, lab == v)  # the export is right
    masks, _ = import_masks(out, folder)  # the round trip
    for c, v in enumerate((1, 2)):
        assert np.array_equal(masks.array[c] > 0, lab == v)


def test_nifti_export_on_a_tilted_series_is_refused(tmp_path):
    """``is_regular()`` is documented as 'no tilt, even spacing' but accepts a constant in-plane drift (the
    grid affine absorbs it as a shear), so --format nifti --reference writes a sheared sform. NIfTI's
    qform cannot hold a shear; ITK (SimpleITK, Slicer, ITK-SNAP, medseg's own reader) then uses the qform
    and puts the voxels elsewhere."""

    folder, pos, _ = _tilted(tmp_path)
    lab = _box_on_slices((N, N, len(pos)))
    with pytest.raises(InputError, match="tilt"):  # it wrote a sheared sform that SimpleITK placed 29 mm away
        export_segmentation(_label_image_covering(pos, lab), folder, "nifti", tmp_path / "seg.nii.gz")
    assert not (tmp_path / "seg.nii.gz").exists()


def test_a_prediction_on_the_untilted_grid_exports_back_onto_the_tilted_series(tmp_path):
    """``medseg convert --allow-tilt`` resamples a tilted series onto its first slice's orthogonal grid, keeping
    its shape, so the later slices' corners fall outside it. A label map on that grid exported back onto the series
    was refused ("448 of 2048 voxel centres lie outside it"), which left no DICOM-out path for tilted series. The
    cut corners are background now, said in a warning; every other voxel is the label map's at the same place
    (expected from the slice positions and the NIfTI affine: nibabel and numpy)."""
    import highdicom as hd
    import nibabel as nib

    from conftest import run_cli

    pos = [(-8.0, -8.0 + 1.0 * k, 2.0 * k) for k in range(8)]  # 1 mm further posterior per slice: whole pixels
    uids = _write_series(tmp_path / "tilted", pos)
    assert run_cli("convert", tmp_path / "tilted", tmp_path / "untilted.nii.gz", "--allow-tilt").code == 0
    grid = nib.load(tmp_path / "untilted.nii.gz")
    lab = np.zeros(grid.shape, np.uint8)
    lab[3:9, 2:14, 1:7] = 1
    lab[10:13, 5:16, 2:8] = 2  # reaches the last rows, which the tilt moves off the later slices' grid
    nib.save(nib.Nifti1Image(lab, grid.affine), tmp_path / "pred.nii.gz")
    res = run_cli("export", tmp_path / "pred.nii.gz", "-r", tmp_path / "tilted", "-f", "dicom-seg",
                  "-o", tmp_path / "seg.dcm")
    assert res.code == 0, res.err
    assert "448 of 2048 voxel centres" in res.err and "background" in res.err
    expected = np.zeros((N, N, len(pos)), np.uint8)
    to_grid = np.linalg.inv(grid.affine)
    for k, p in enumerate(pos):
        for i in range(N):
            for j in range(N):
                world = LPS_TO_RAS @ np.array([p[0] + i * PS, p[1] + j * PS, p[2], 1.0])
                idx = np.rint(to_grid @ world)[:3].astype(int)
                if all(0 <= v < n for v, n in zip(idx, lab.shape)):
                    expected[i, j, k] = lab[tuple(idx)]
    assert (expected == 2).sum() < (lab == 2).sum()  # the test reaches the cut corners
    seg = hd.seg.segread(str(tmp_path / "seg.dcm"))
    arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2],
                                            assert_missing_frames_are_empty=True)
    for c, v in enumerate((1, 2)):
        assert np.array_equal(np.transpose(arr[..., c], (2, 1, 0)) > 0, expected == v)


def test_a_label_map_on_another_grid_must_still_cover_the_tilted_series(tmp_path):
    """The corners are forgiven only on the untilted grid itself: the same map shifted by one voxel is refused."""
    import nibabel as nib

    from conftest import run_cli

    pos = [(-8.0, -8.0 + 1.0 * k, 2.0 * k) for k in range(8)]
    _write_series(tmp_path / "tilted", pos)
    assert run_cli("convert", tmp_path / "tilted", tmp_path / "untilted.nii.gz", "--allow-tilt").code == 0
    grid = nib.load(tmp_path / "untilted.nii.gz")
    shifted = grid.affine.copy()
    shifted[:3, 3] += grid.affine[:3, 0]
    nib.save(nib.Nifti1Image(np.ones(grid.shape, np.uint8), shifted), tmp_path / "pred.nii.gz")
    res = run_cli("export", tmp_path / "pred.nii.gz", "-r", tmp_path / "tilted", "-f", "dicom-seg",
                  "-o", tmp_path / "seg.dcm")
    assert res.code == 2 and "voxel centres lie outside it" in res.err and not (tmp_path / "seg.dcm").exists()


def test_a_regular_grid_format_on_the_tilted_series_is_refused_in_one_line(tmp_path):
    """``--format nifti --reference TILTED`` is refused (no regular grid holds the series); the corner warning of
    the untilted grid's export came first, a second line before the error."""
    import nibabel as nib

    from conftest import assert_clean_error, run_cli

    _write_series(tmp_path / "tilted", [(-8.0, -8.0 + 1.0 * k, 2.0 * k) for k in range(8)])
    assert run_cli("convert", tmp_path / "tilted", tmp_path / "untilted.nii.gz", "--allow-tilt").code == 0
    grid = nib.load(tmp_path / "untilted.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(grid.shape, np.uint8), grid.affine), tmp_path / "pred.nii.gz")
    res = run_cli("export", tmp_path / "pred.nii.gz", "-r", tmp_path / "tilted", "-f", "nifti",
                  "-o", tmp_path / "seg.nii.gz")
    assert_clean_error(res, "tilted")
    assert not (tmp_path / "seg.nii.gz").exists()


@pytest.mark.parametrize("make", [_tilted, _uneven], ids=["gantry-tilt", "uneven-spacing"])
def test_an_irregular_series_is_not_imported_onto_a_regular_grid(tmp_path, make):
    """import_segmentation / ``medseg convert RS.dcm out.nii.gz --reference DIR`` returns the rasterised
    slices with ``ref.grid_affine()`` even when the series is not on that grid (uneven: 1 mm off; tilted:
    a shear that the NIfTI written by convert cannot hold). Every voxel must be where its slice is, or the
    import must be refused as export refuses regular-grid files for such series."""
    from medseg.io.convert import convert

    folder, pos, _ = make(tmp_path)
    lab = _box_on_slices((N, N, len(pos)))
    rt = export_segmentation(_label_image_covering(pos, lab), folder, "rtstruct", tmp_path / "rt.dcm")
    with pytest.raises(InputError, match="tilted or unevenly spaced"):  # it wrote the slices on a regular grid
        convert(rt, tmp_path / "back.nii.gz", reference=folder)
    assert not (tmp_path / "back.nii.gz").exists()
    from medseg.export.importers import import_masks

    masks, _ = import_masks(rt, folder)  # the per-slice masks stay available
    assert np.array_equal(masks.array.sum(0) > 0, lab > 0)


def test_half_voxel_tie_does_not_depend_on_how_the_label_map_is_stored():
    """A label map whose grid is the series grid shifted by half a voxel (the corner-vs-centre origin slip):
    every series centre lies half-way between two label voxels. The same map stored with its i axis
    reversed (affine adjusted: identical world geometry) must export the same masks; nearest neighbour
    currently breaks the tie in the label's index space, so the result moves by one voxel with storage."""
    from pydicom import Dataset

    from medseg.export.reference import ReferenceSeries
    from medseg.export.resample import resample_to_reference

    ref = ReferenceSeries("ct", [Dataset(), Dataset()], [], 1, 4, np.array([1.0, 0, 0]), np.array([0.0, 1, 0]),
                          (1.0, 1.0), np.array([[0.0, 0, 0], [0, 0, 1]]))  # 4 columns, 1 row, 2 slices
    arr = np.zeros((4, 1, 2), np.uint8)
    arr[1:3] = 1  # label voxels 1, 2 = world x 1.5, 2.5 (LPS)
    shift = np.eye(4)
    shift[0, 3] = 0.5  # half a column along the row direction
    aff = ref.grid_affine() @ shift
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, 3
    as_is = resample_to_reference(Image(arr, aff), ref)
    reversed_i = resample_to_reference(Image(arr[::-1].copy(), aff @ flip), ref)
    assert np.array_equal(as_is, reversed_i), (as_is[:, 0, 0].tolist(), reversed_i[:, 0, 0].tolist())
