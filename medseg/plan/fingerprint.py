"""Dataset fingerprint: spacings, sizes, foreground intensity statistics per channel, class frequencies."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from medseg.train.dataset import Dataset, load_case, _progress


@dataclass
class Fingerprint:
    """What the plan is derived from (all lists are per case, in the dataset's case order)."""

    spacings: list[list[float]]
    shapes: list[list[int]]
    channel_names: list[str]
    intensity: list[dict] = field(default_factory=list)  # per channel: mean, std, p00_5, p99_5, min, max
    class_voxels: dict[int, int] = field(default_factory=dict)
    class_cases: dict[int, int] = field(default_factory=dict)  # in how many cases each class is present
    num_cases: int = 0

    @property
    def median_spacing(self) -> np.ndarray:
        return np.median(np.asarray(self.spacings), axis=0)

    @property
    def median_shape(self) -> np.ndarray:
        return np.median(np.asarray(self.shapes), axis=0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_voxels"] = {int(k): int(v) for k, v in self.class_voxels.items()}
        d["class_cases"] = {int(k): int(v) for k, v in self.class_cases.items()}
        return d


def compute_fingerprint(ds: Dataset, max_cases: int | None = None, samples_per_case: int = 10000,
                        seed: int = 0, progress: bool = False) -> Fingerprint:
    """Read every labelled case once (``max_cases`` limits it, spread evenly) and summarise it.

    Foreground intensities are sampled (``samples_per_case`` voxels per case) like nnU-Net does, so the
    percentiles are those of the foreground of the whole dataset.
    """
    rng = np.random.default_rng(seed)
    cases = [c for c in ds.cases if c.label is not None] or ds.cases
    if max_cases and len(cases) > max_cases:
        cases = [cases[i] for i in np.linspace(0, len(cases) - 1, max_cases).round().astype(int)]
    spacings, shapes, samples = [], [], None
    cvox: dict[int, int] = {}
    ccase: dict[int, int] = {}
    for case in _progress(cases, progress, "fingerprint"):
        image, label = load_case(case, labels=ds.labels, channels=len(ds.channel_names))
        spacings.append([float(s) for s in image.spacing])
        shapes.append([int(s) for s in image.shape])
        if samples is None:
            samples = [[] for _ in range(image.num_channels)]
        fg = (label.array > 0) if label is not None else np.ones(image.shape, bool)
        if not fg.any():
            fg = np.ones(image.shape, bool)
        for c in range(image.num_channels):
            vals = image.array[c][fg]
            if vals.size > samples_per_case:
                vals = rng.choice(vals, samples_per_case, replace=False)
            samples[c].append(vals)
        if label is not None:
            vals, counts = np.unique(label.array, return_counts=True)
            for v, n in zip(vals.tolist(), counts.tolist()):
                cvox[v] = cvox.get(v, 0) + n
                ccase[v] = ccase.get(v, 0) + 1
    intensity = []
    for c, chunks in enumerate(samples or []):
        v = np.concatenate(chunks).astype(np.float64)
        intensity.append({"mean": float(v.mean()), "std": float(v.std()), "p00_5": float(np.percentile(v, 0.5)),
                          "p99_5": float(np.percentile(v, 99.5)), "min": float(v.min()), "max": float(v.max())})
    return Fingerprint(spacings, shapes, ds.channel_names, intensity, cvox, ccase, len(cases))
