"""Real label maps and perturbed copies shared by the evaluation tests (read in place from ../shared/data)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from conftest import data_path


def hippocampus(n: int = 6) -> list[tuple[str, np.ndarray, object]]:
    """The first ``n`` hippocampus reference label maps as (case, array, nibabel image)."""
    import nibabel as nib

    files = sorted(data_path("msd_hippocampus", "labelsTr").glob("*.nii.gz"))[:n]
    out = []
    for f in files:
        img = nib.load(str(f))
        out.append((f.name.split(".")[0], np.asanyarray(img.dataobj).astype(np.uint8), img))
    return out


def perturb(ref: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """A plausible wrong prediction: eroded, shifted, dilated, with deleted components, or mixed."""
    rng = np.random.default_rng(seed)
    labels = [int(v) for v in np.unique(ref) if v]
    pred = ref.copy()
    if kind == "erode":  # remove the border of every other class
        for c in labels[::2]:
            m = ref == c
            pred[m & ~ndi.binary_erosion(m)] = 0
    elif kind == "shift":
        pred = np.roll(ref, (1, -2, 1)[: ref.ndim], axis=tuple(range(ref.ndim)))
    elif kind == "dilate":
        for c in labels[1::2]:
            grow = ndi.binary_dilation(ref == c, iterations=2) & (pred == 0)
            pred[grow] = c
    elif kind == "delete":  # delete whole classes/components and add a false-positive blob
        for c in labels[::3]:
            pred[ref == c] = 0
        idx = tuple(int(rng.integers(2, s - 3)) for s in ref.shape)
        box = tuple(slice(i - 1, i + 2) for i in idx)
        pred[box] = labels[-1] if labels else 1
    elif kind == "mixed":
        pred = perturb(perturb(perturb(ref, "erode"), "dilate"), "shift")
    else:
        raise ValueError(kind)
    return pred


KINDS = ("erode", "shift", "dilate", "delete", "mixed")


def totalseg() -> tuple[np.ndarray, tuple[float, ...]]:
    """The 42-value TotalSegmentator example segmentation and its spacing."""
    import nibabel as nib

    img = nib.load(str(data_path("totalseg_example", "example_seg.nii.gz")))
    return np.asanyarray(img.dataobj).astype(np.uint8), tuple(float(z) for z in img.header.get_zooms()[:3])


def one_hot(arr: np.ndarray, labels) -> "torch.Tensor":  # noqa: F821
    """(1, K, ...) float one-hot tensor, MONAI's expected input."""
    import torch

    return torch.from_numpy(np.stack([arr == c for c in labels])[None].astype(np.float32))
