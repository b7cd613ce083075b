"""Export benchmark (issue 6): medseg's RTSTRUCT vs rt-utils on a real MR series, and contour import.

Label map: the intensity-derived head / bright-tissue map on ``dicom/mr_study/12-T1post-05670``
(the same construction as the tests), or with ``--pinholes 0.05`` the head riddled with small holes (about
170-1,400 per slice). For each writer: time, ``dciodvfy`` "Error" lines, and the
voxel Dice of each ROI after plastimatch rasterises it back on the series (the issue's command,
and with ``--xor-contours``). Import: medseg's even-odd scan-line fill against ``skimage.draw.polygon``
on the same contours. Times are CPU seconds of this process (the writers and readers are
single-threaded Python), so they hold on a shared machine better than wall time.

Run from the repository root::

    python -m benchmarks.bench_export [--data ../shared/data] [--pinholes 0.05]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def _label_map(series_dir: Path):
    from scipy import ndimage as ndi
    from skimage.filters import threshold_multiotsu, threshold_otsu
    from skimage.measure import label

    from medseg.io.dicom import load_series

    vol = load_series(series_dir)
    v = vol.array.astype(np.float32)

    def largest(m):
        lab = label(m)
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        return lab == sizes.argmax()

    head = largest(v > threshold_otsu(v))
    head = np.stack([ndi.binary_fill_holes(head[:, :, k]) for k in range(head.shape[2])], axis=-1)
    bright = largest((v > threshold_multiotsu(v[head], 3)[1]) & head)
    lab = np.zeros(v.shape, np.uint8)
    lab[head] = 1
    lab[bright] = 2
    return vol.with_array(lab)


def _pinholes(label, series_dir: Path, share: float = 0.05):
    """The head of ``label`` (both values) with one-voxel-wide holes wherever the image's fine-scale residual (the
    image minus its Gaussian smoothing) is in its top ``share`` inside the head: about a thousand holes per slice, as
    a noisy prediction or a lung with its vessels has, from the real series (one value, 1)."""
    from scipy import ndimage as ndi

    from medseg.io.dicom import load_series

    head = label.array > 0
    v = load_series(series_dir).array.astype(np.float32)
    residual = v - ndi.gaussian_filter(v, (1.0, 1.0, 0.0))
    holes = head & (residual > np.quantile(residual[head], 1 - share))
    return label.with_array((head & ~holes).astype(np.uint8))


def _dciodvfy_errors(path: Path) -> int | str:
    exe = shutil.which("dciodvfy")
    if exe is None:
        return "n/a"
    out = subprocess.run([exe, str(path)], capture_output=True, text=True)
    return sum(ln.startswith("Error") for ln in (out.stdout + out.stderr).splitlines())


def _plastimatch_dice(rtss: Path, series_dir: Path, truth: dict[str, np.ndarray], xor: bool, work: Path):
    import SimpleITK as sitk

    from medseg.io.image import Image

    exe = shutil.which("plastimatch")
    if exe is None:
        return {}
    img, lst = work / "ss.nii.gz", work / "ss.txt"
    cmd = [exe, "convert", "--input", str(rtss), "--referenced-ct", str(series_dir), "--output-ss-img", str(img),
           "--output-ss-list", str(lst)] + (["--xor-contours"] if xor else [])
    subprocess.run(cmd, capture_output=True, check=True)
    ss = Image.from_sitk(sitk.ReadImage(str(img)))
    arr = ss.array if ss.channels_first else ss.array[None]
    out = {}
    for i, ln in enumerate(x for x in lst.read_text().splitlines() if x.strip()):
        name = ln.split("|")[2]
        m = (arr[i // 8] >> (i % 8)) & 1 > 0
        t = truth[name]
        out[name] = 2 * (m & t).sum() / (m.sum() + t.sum())
    return out


def _rt_utils(series_dir: Path, label, names, out: Path) -> float:
    from rt_utils import RTStructBuilder
    from rt_utils.image_helper import load_sorted_image_series

    from medseg.export.reference import load_reference

    ref = load_reference(series_dir)
    t = time.process_time()
    rt = RTStructBuilder.create_new(dicom_series_path=str(series_dir))
    order = [str(ds.SOPInstanceUID) for ds in load_sorted_image_series(str(series_dir))]
    k_of = {uid: k for k, uid in enumerate(ref.meta["sop_instance_uids"])}
    for value, name in names.items():
        mask = np.stack([label.array[:, :, k_of[u]].T == value for u in order], axis=-1)  # (rows, cols, slices)
        rt.add_roi(mask=mask, name=name)
    rt.save(str(out))
    return time.process_time() - t


def _import_with_skimage(rtss: Path, ref) -> np.ndarray:
    """The same import with skimage.draw.polygon (XOR per contour) instead of medseg's scan-line fill."""
    import pydicom
    from skimage.draw import polygon

    from medseg.export.rtstruct import _read_contour_data

    rs = pydicom.dcmread(str(rtss))
    depth = ref.positions @ ref.normal
    masks = np.zeros((len(rs.ROIContourSequence), *ref.shape), bool)
    for ch, roi in enumerate(rs.ROIContourSequence):
        for c in roi.ContourSequence:
            pts = _read_contour_data(c)
            k = int(np.argmin(np.abs(depth - float(np.mean(pts @ ref.normal)))))
            rel = pts - ref.positions[k]
            ii, jj = polygon(rel @ ref.row_dir / ref.spacing_rc[1], rel @ ref.col_dir / ref.spacing_rc[0],
                             shape=(ref.columns, ref.rows))
            masks[ch, ii, jj, k] ^= True
    return masks


def main(argv=None) -> None:
    from medseg.export import export_segmentation
    from medseg.export.importers import import_masks
    from medseg.export.reference import load_reference

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--pinholes", type=float, default=0.0, metavar="SHARE",
                    help="instead: the head with holes at the top SHARE of the image's fine-scale residual (0.05)")
    args = ap.parse_args(argv)
    series_dir = Path(args.data) / "dicom" / "mr_study" / "12-T1post-05670"
    label = _label_map(series_dir)
    names = {1: "head", 2: "bright_tissue"}
    if args.pinholes:  # the head riddled with small holes instead (keyhole bridging at scale)
        label, names = _pinholes(label, series_dir, args.pinholes), {1: "head_with_pinholes"}
    truth = {n: label.array == v for v, n in names.items()}
    ref = load_reference(series_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t = time.process_time()
        mine = export_segmentation(label, series_dir, "rtstruct", work / "medseg.dcm", labels=names)
        t_mine = time.process_time() - t
        t = time.process_time()
        sep = export_segmentation(label, series_dir, "rtstruct", work / "sep.dcm", labels=names, rt_holes="separate")
        t_sep = time.process_time() - t
        t_rtu = _rt_utils(series_dir, label, names, work / "rtutils.dcm")
        for tool, path, secs in (("medseg (keyhole holes, default)", mine, t_mine),
                                 ("medseg --rt-holes separate", sep, t_sep),
                                 ("rt-utils 1.2.7 (defaults)", work / "rtutils.dcm", t_rtu)):
            d_plain = _plastimatch_dice(path, series_dir, truth, False, work)
            d_xor = _plastimatch_dice(path, series_dir, truth, True, work)
            rows.append((tool, secs, _dciodvfy_errors(path), d_plain, d_xor, path.stat().st_size))
        t = time.process_time()
        masks, _ = import_masks(mine, series_dir)
        t_imp = time.process_time() - t
        t = time.process_time()
        sk = _import_with_skimage(mine, ref)
        t_sk = time.process_time() - t
        same = bool(np.array_equal(sk, masks.array > 0))
        t = time.process_time()
        export_segmentation(label, series_dir, "dicom-seg", work / "seg.dcm", labels=names)
        t_seg = time.process_time() - t
        seg_size, seg_err = (work / "seg.dcm").stat().st_size, _dciodvfy_errors(work / "seg.dcm")

    print(f"MR series {series_dir.name}: {label.shape}, ROI voxels "
          + ", ".join(f"{n} {int(m.sum())}" for n, m in truth.items()))
    print("| writer | CPU time (s) | dciodvfy errors | plastimatch Dice (issue's command) | plastimatch Dice "
          "(--xor-contours) | size (MB) |")
    print("|---|---|---|---|---|---|")
    for tool, secs, err, d_plain, d_xor, size in rows:
        fmt = lambda d: ", ".join(f"{k} {v:.4f}" for k, v in d.items()) or "n/a"  # noqa: E731
        print(f"| {tool} | {secs:.2f} | {err} | {fmt(d_plain)} | {fmt(d_xor)} | {size / 1e6:.2f} |")
    print(f"\nimport (RTSTRUCT -> masks): medseg scan-line fill {t_imp:.2f} s, skimage.draw.polygon {t_sk:.2f} s "
          f"(x{t_sk / t_imp:.1f}); identical masks: {same}")
    print(f"DICOM-SEG export: {t_seg:.2f} s, {seg_size / 1e6:.2f} MB, dciodvfy errors {seg_err}")


if __name__ == "__main__":
    main()
