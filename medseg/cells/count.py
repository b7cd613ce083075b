"""Counting: image(s) in, instance label maps + per-cell tables + overlays + ``counts.csv`` out.

Two segmenters behind one interface (``segment(image, spacing) -> labels``):

* :class:`CellModel`: a trained run (``model.json`` + ``model.pt``), sliding-window U-Net prediction of
  background/interior/boundary (+ a normalised distance map, + offsets to the nuclei's centres), then
  marker-controlled watershed (markers = cores of the distance map, or interior minus boundary; flooding
  restricted to interior + boundary) or centre voting; objects no brighter than the background's noise dropped.
* :class:`ClassicalSegmenter`: Otsu/local threshold + distance-transform watershed (no training).

Every input is read and validated before anything is written; every file is written atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path, case_name


class CellModel:
    """A trained cell model loaded from its run folder.

    Examples
    --------
    ``labels = CellModel.load("runs/dsb").segment(image)``
    """

    def __init__(self, net, cfg, meta, overlap: float = 0.25, tta: bool = False, device: str = "auto",
                 diameter: float | None = None):
        self.net, self.cfg, self.meta, self.overlap, self.tta = net, cfg, meta, overlap, tta
        self.device = device
        self.diameter = diameter  # the images' nucleus diameter in pixels, if known (else estimated per image)

    @classmethod
    def load(cls, run_dir, overlap: float = 0.25, tta: bool = False, device: str = "auto",
             diameter: float | None = None) -> "CellModel":
        import torch

        from medseg.cells.train import build_cell_network, load_config

        meta, cfg = load_config(run_dir)
        weights = Path(run_dir) / "model.pt"
        if not weights.exists():
            raise InputError("cell model has no weights (model.pt): was training finished?", path=run_dir)
        net = build_cell_network(cfg)
        try:
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except Exception as exc:
            raise InputError(f"cannot load model weights ({' '.join(str(exc).split())[:160]})", path=weights) from exc
        net.eval()
        return cls(net, cfg, meta, overlap, tta, device, diameter)

    def scale_for(self, image: np.ndarray) -> float:
        """Resize factor that brings the image's nuclei to the model's training diameter (1: none)."""
        from medseg.cells.scale import estimate_scale, scale_to

        if not self.cfg.diameter or image.ndim != 2:
            return 1.0
        if self.diameter:
            return scale_to(self.cfg.diameter, self.diameter)
        return estimate_scale(image, lambda x: self.postprocess(self._probabilities(x)), self.cfg.diameter)

    def probabilities(self, image: np.ndarray, scale: float | None = None) -> np.ndarray:
        """Class probabilities (3, *spatial) of one single-channel image, followed by the predicted distance map
        (0..1) when the model has a distance head and by the offsets to the nuclei's centres (pixels, one channel
        per axis) when it has an offset head. The image is first resized by ``scale``
        (default :meth:`scale_for`), and so are the maps: pass ``shape`` to :meth:`postprocess` to get labels
        of the input's size."""
        from medseg.cells.scale import resize_image, scaled_shape

        if image.ndim != self.cfg.spatial_dims:
            raise InputError(f"image is {image.ndim}D but the model is {self.cfg.spatial_dims}D", path=None)
        scale = self.scale_for(image) if scale is None else scale
        return self._probabilities(resize_image(image, scaled_shape(image.shape, scale)))  # float32 even at 1.0

    def _probabilities(self, image: np.ndarray) -> np.ndarray:
        import hashlib

        if not (self.cfg.diameter and image.ndim == 2 and self.diameter is None):
            return self._predict(image)
        # the scale estimate's pass is usually also the final one: remember the last image's maps
        key = (image.shape, hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest(),
               self.tta, self.overlap)
        cached = getattr(self, "_last", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        prob = self._predict(image)
        self._last = (key, prob)
        return prob

    def _predict(self, image: np.ndarray) -> np.ndarray:
        import torch

        from medseg.cells.data import percentile_normalize
        from medseg.cells.train import out_channels
        from medseg.infer.sliding_window import flip_sets, sliding_window_predict

        x = np.ascontiguousarray(percentile_normalize(image, *self.cfg.norm_percentiles), dtype=np.float32)[None]
        # windows are the training patch (divisible by the strides; smaller images are padded); TTA mirrors the
        # in-plane axes only (a z-stack is not symmetric in z); bf16 where the CPU computes it natively
        nd, c = self.cfg.spatial_dims, self.cfg
        tta = [nd - 2, nd - 1] if self.tta else False

        def predict(img, flips):
            return sliding_window_predict(self.net, img, list(c.patch_size), overlap=self.overlap, tta=flips,
                                          batch_size=4, device=self.device, num_classes=out_channels(c),
                                          activation=None)

        if c.offset_head and tta:
            # a mirrored image has mirrored offsets: flip the maps back and negate the flipped axes' components
            logits, sets = 0, flip_sets(tta, nd)
            for axes in sets:
                dims = [a + 1 for a in axes]
                y = predict(np.ascontiguousarray(np.flip(x, dims)), False) if dims else predict(x, False)
                y = torch.flip(y, dims) if dims else y
                for a in axes:
                    y[-nd + a] = -y[-nd + a]
                logits = logits + y
            logits = logits / len(sets)
        else:
            # blended logits (flip TTA averages them, as for the classes)
            logits = predict(x, tta)
        return self.activate(logits)

    def activate(self, logits) -> np.ndarray:
        """The network's (C, *spatial) output tensor as maps: softmax over the classes, a sigmoid for the distance
        channel, offsets back in pixels."""
        import torch

        c = self.cfg
        parts = [torch.softmax(logits[:3], 0)]
        if c.distance_head:
            parts.append(torch.sigmoid(logits[3:4]))
        if c.offset_head:
            parts.append(logits[-c.spatial_dims:] * c.offset_scale)
        return torch.cat(parts).numpy()

    def postprocess(self, prob: np.ndarray, threshold: float | None = None,
                    seed_threshold: float | None = None, seeds: str | None = None, shape=None,
                    image: np.ndarray | None = None) -> np.ndarray:
        """Instances from :meth:`probabilities` by marker-controlled watershed (the run's thresholds and marker
        source unless given): markers are the cores ``distance > seed_threshold`` of the predicted distance map
        (``seeds="distance"``) or ``interior - boundary > seed_threshold`` (``"boundary"``); ``"votes"`` groups
        the pixels whose predicted offsets lead to the same centre instead (``seed_threshold``: the vote density a
        centre needs; :func:`medseg.postprocess.votes.vote_instances`). With ``shape``, the
        labels are resized (nearest neighbour) to it. With ``image`` (of that shape), objects no brighter than the
        background's noise are dropped (``min_snr``; :mod:`medseg.postprocess.contrast`), dark objects instead for
        a model trained on dark nuclei."""
        from medseg.postprocess.watershed import watershed_instances

        c = self.cfg
        seeds = seeds or c.seeds
        if seeds == "distance" and not c.distance_head:
            raise InputError("seeds='distance' needs a model with a distance head", path=None)
        if seeds == "votes":
            if not c.offset_head:
                raise InputError("seeds='votes' needs a model with an offset head", path=None)
            from medseg.postprocess.votes import vote_instances

            labels = vote_instances(prob[1] + prob[2], prob[-c.spatial_dims:],
                                    threshold=c.threshold if threshold is None else threshold,
                                    min_votes=c.seed_threshold if seed_threshold is None else seed_threshold,
                                    min_size=c.min_size_px)
            return self._finish(labels, shape, image)
        labels = watershed_instances(prob[1] + prob[2], boundary=prob[2],
                                     distance=prob[3] if seeds == "distance" else None, spacing=None,
                                     threshold=c.threshold if threshold is None else threshold,
                                     seed_threshold=c.seed_threshold if seed_threshold is None else seed_threshold,
                                     min_size=c.min_size_px, min_seed_size=min(c.min_size_px, 4),
                                     keep_unseeded=False, markers=seeds)
        return self._finish(labels, shape, image)

    def _finish(self, labels: np.ndarray, shape, image) -> np.ndarray:
        from medseg.cells.scale import resize_labels
        from medseg.postprocess.contrast import remove_faint_instances

        # nearest neighbour back to the input's size (outlines that follow the resized foreground probability
        # instead changed AP@0.5-0.9 by < 0.005 on held-out training images)
        labels = labels if shape is None else resize_labels(labels, tuple(shape))
        if image is not None and self.cfg.min_snr:
            if image.shape != labels.shape:
                raise ValueError(f"image shape {image.shape} differs from the labels' {labels.shape}: pass shape")
            labels = remove_faint_instances(labels, image, self.cfg.min_snr, int(self.meta.get("polarity", 1)))
        return labels

    def segment(self, image: np.ndarray, spacing=None) -> np.ndarray:
        return self.postprocess(self.probabilities(image), shape=image.shape, image=image)


@dataclass
class ClassicalSegmenter:
    """Threshold + distance-transform watershed with the nucleus size estimated per image (or a known in-plane
    ``diameter`` in pixels)."""

    method: str = "otsu"
    diameter: float | None = None

    def segment(self, image: np.ndarray, spacing=None) -> np.ndarray:
        from medseg.cells.data import percentile_normalize
        from medseg.postprocess.watershed import classical_instances

        radius = None
        if self.diameter:  # pixels -> the physical units classical_instances works in
            radius = self.diameter / 2 * (float(np.min(spacing[-2:])) if spacing is not None else 1.0)
        return classical_instances(percentile_normalize(image), spacing=spacing, method=self.method, radius=radius)


def list_images(path) -> list[Path]:
    """One image file, or the images of a folder (``.tif``, ``.tiff``, ``.png``), sorted."""
    from medseg.cells.data import IMAGE_EXTS

    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError("no such file or folder", path=path)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))
    if not files:
        raise InputError("no images (.tif, .tiff, .png) in folder", path=path)
    return files


def count_cells(inputs, out_dir, model=None, classical: bool = False, channel: int | None = None,
                pixel_size=None, method: str = "otsu", exclude_border: bool = False, roi_zip: bool = False,
                tta: bool = False, diameter: float | None = None, min_snr: float | None = None,
                threads: int | None = None, progress: bool = True) -> list[dict]:
    """Segment and count the cells of an image or a folder; write per-image outputs and ``counts.csv``.

    ``diameter`` (pixels) is the nuclei's typical size when known; 2D models otherwise estimate it per image and
    resize the image to the size they were trained at; the classical mode sizes its markers by it. ``min_snr``
    overrides the model's contrast test (:mod:`medseg.postprocess.contrast`; 0 turns it off). ``threads`` are the
    CPU threads for torch (default: the cores not already busy); fix it where runs must give identical results,
    since a different thread count changes the order of floating-point sums.

    Writes ``<id>_labels.tif`` (uint16 ImageJ TIFF with the pixel size), ``<id>_overlay.png``,
    ``<id>_cells.csv`` (and ``<id>_rois.zip`` with ``roi_zip``) per image and ``counts.csv`` for all.
    Returns the rows of ``counts.csv``.
    """
    from medseg.cells.data import load_image
    from medseg.cells.tables import cell_table, overlay_rgb, rows_to_csv, table_columns
    from medseg.io.image import Image
    from medseg.io.microscopy import write_microscopy
    from medseg.postprocess.watershed import clear_border_instances, relabel_sequential

    files = list_images(inputs)
    if model is None and not classical:
        raise InputError("choose a model (-m RUN) or --classical", path=inputs)
    # validate every input (readable, one channel, not empty) before writing anything
    names = {}
    for f in files:
        img = load_image(f, channel, pixel_size)
        cid = case_name(f)
        if cid in names:
            raise InputError(f"two images share the id '{cid}' ({names[cid].name}, {f.name})", path=f)
        names[cid] = f
    seg = ClassicalSegmenter(method, diameter) if classical else (
        model if isinstance(model, CellModel) else CellModel.load(model, tta=tta, diameter=diameter))
    if min_snr is not None and not classical:
        seg.cfg.min_snr = float(min_snr)
    if not classical:
        import torch

        from medseg.cells.train import auto_threads

        torch.set_num_threads(threads or auto_threads())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = []
    it = _track(files, progress)
    for f in it:
        img = load_image(f, channel, pixel_size)
        arr = img.array
        sp = img.spacing
        labels = seg.segment(arr, sp)
        if exclude_border:
            labels = relabel_sequential(clear_border_instances(labels))
        labels = labels.astype(np.uint16) if labels.max() < 65536 else labels
        cid = case_name(f)
        rows = cell_table(labels, arr, sp)
        with atomic_path(out_dir / f"{cid}_labels.tif", protect=files) as tmp:
            write_microscopy(Image(labels, img.affine, {"unit": img.meta.get("unit", "pixel")}), tmp)
        with atomic_path(out_dir / f"{cid}_cells.csv", protect=files) as tmp:
            tmp.write_text(rows_to_csv(rows, table_columns(arr.ndim)))
        with atomic_path(out_dir / f"{cid}_overlay.png", protect=files) as tmp:
            import imageio.v3 as iio

            iio.imwrite(tmp, overlay_rgb(arr, labels), extension=".png")
        if roi_zip and arr.ndim == 2:
            from medseg.cells.rois import write_roi_zip

            write_roi_zip(labels, out_dir / f"{cid}_rois.zip")
        size_key = "area" if arr.ndim == 2 else "volume"
        sizes = [r[size_key] for r in rows]
        counts.append({"image": f.name, "id": cid, "count": len(rows),
                       "count_not_touching_border": sum(not r["touches_border"] for r in rows),
                       f"mean_{size_key}": round(float(np.mean(sizes)), 4) if sizes else 0.0,
                       f"median_{size_key}": round(float(np.median(sizes)), 4) if sizes else 0.0,
                       "unit": img.meta.get("unit", "pixel"), "method": "classical" if classical else "model"})
    with atomic_path(out_dir / "counts.csv", protect=files) as tmp:
        tmp.write_text(rows_to_csv(counts))
    return counts


def _track(files, progress):
    if not progress or len(files) < 2 or os.environ.get("PYTEST_CURRENT_TEST"):
        return files
    from rich.progress import track

    return track(files, description="counting", transient=True)
