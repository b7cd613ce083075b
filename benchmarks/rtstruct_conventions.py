"""RTSTRUCT rasterisation conventions vs the provided mask of the sample planning-system RTSTRUCT.

    python benchmarks/rtstruct_conventions.py [--data ../shared/data/dicom/ct_rtstruct]

Imports ``RS_Body_SpinalCord.dcm`` with medseg's ``centre`` and ``edge`` rules and prints voxel counts and Dice
against ``Mask.nii.gz`` (1 = SpinalCord, 2 = BODY outside the cord). Where OpenCV is installed (it comes with
rt-utils in the test extra), also ``cv2.fillPoly`` with 4 fractional bits, the rule the mask appears to follow.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def opencv_masks(rs_path: Path, grid) -> np.ndarray | None:
    """Per-ROI masks by cv2.fillPoly (pixel coordinates x 16, shift=4), [roi, i, j, k] like import_masks."""
    try:
        import cv2
    except ImportError:
        return None
    import pydicom

    rs = pydicom.dcmread(str(rs_path))
    inv = np.linalg.inv(grid.affine)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    out = np.zeros((len(rs.StructureSetROISequence), *grid.shape), bool)
    numbers = [int(r.ROINumber) for r in rs.StructureSetROISequence]
    for roi in rs.ROIContourSequence:
        ch = numbers.index(int(roi.ReferencedROINumber))
        for c in roi.ContourSequence:
            pts = np.asarray(c.ContourData, float).reshape(-1, 3) @ lps_to_ras
            ijk = pts @ inv[:3, :3].T + inv[:3, 3]
            k = int(round(ijk[0, 2]))
            sl = np.zeros(grid.shape[1::-1], np.uint8)  # (j, i): cv2 takes (x=i, y=j)
            cv2.fillPoly(sl, [np.round(ijk[:, :2] * 16).astype(np.int32)], 1, shift=4)
            out[ch, :, :, k] ^= sl.T > 0
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared/data/dicom/ct_rtstruct")
    args = ap.parse_args(argv)
    from medseg.export.importers import import_masks
    from medseg.export.resample import resample_to_reference
    from medseg.io.readers import read_image

    rs = args.data / "RS_Body_SpinalCord.dcm"
    rows = {}
    for rule in ("centre", "edge"):
        masks, names = import_masks(rs, args.data, rt_fill=rule)
        rows[f"medseg {rule}"] = masks.array > 0
    truth_img = read_image(args.data / "Mask.nii.gz")
    truth = resample_to_reference(truth_img, masks, require_cover=False).array if not truth_img.same_grid(masks) \
        else truth_img.array
    cv = opencv_masks(rs, masks)
    if cv is not None:
        rows["cv2.fillPoly shift=4"] = cv
    refs = {"BODY": truth > 0, "SpinalCord": truth == 1}
    print("| rule | BODY voxels | BODY Dice | SpinalCord voxels | SpinalCord Dice |")
    print("|---|---|---|---|---|")
    print(f"| provided Mask.nii.gz | {refs['BODY'].sum()} | | {refs['SpinalCord'].sum()} | |")
    for name, m in rows.items():
        cells = []
        for ch, roi in enumerate(names.values()):
            cells += [str(int(m[ch].sum())), f"{dice(m[ch], refs[roi]):.4f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
