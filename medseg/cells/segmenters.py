"""The two cell segmenters behind one interface (``segment(image, spacing) -> labels``).

* :class:`CellModel`: a trained run (``model.json`` + ``model.pt``), sliding-window U-Net prediction of
  background/interior/boundary (+ a normalised distance map, + offsets to the nuclei's centres), then
  marker-controlled watershed (markers = cores of the distance map, or interior minus boundary; flooding
  restricted to interior + boundary) or centre voting; small fragments merged back into their neighbour across
  borders the network does not call boundary; objects no brighter than the background's noise dropped.
* :class:`ClassicalSegmenter`: Otsu/local threshold + distance-transform watershed (no training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import InputError


class CellModel:
    """A trained cell model loaded from its run folder.

    Usually made by :meth:`load`: ``labels = CellModel.load("runs/dsb").segment(image)``.

    Parameters
    ----------
    net : torch.nn.Module or None
        The network (in eval mode); None builds a model that can only :meth:`postprocess` given maps.
    cfg : CellTrainConfig
        The run's settings (thresholds, marker source, heads).
    meta : dict
        The run's ``model.json`` (``polarity``, ``diameter_range``, versions, ...).
    overlap : float
        Overlap of the sliding windows.
    tta : bool
        Average the predictions of the image mirrored along its in-plane axes.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    diameter : float, optional
        The images' nucleus diameter in pixels, if known (else estimated per image).
    rescale : bool
        Native-scale models: resize images whose nuclei lie outside the training range.
    precision : str
        Of the sliding window: ``"auto"`` (bf16 where the CPU computes it natively) or ``"fp32"``.

    Examples
    --------
    The watershed a model runs on its maps, given the maps a perfect network would predict for two touching
    squares (background, interior and boundary as :func:`medseg.cells.targets.boundary_targets` draws them):

    >>> from medseg.cells.config import CellTrainConfig
    >>> from medseg.cells.targets import boundary_targets
    >>> lab = np.zeros((8, 14), int); lab[1:7, 1:7] = 1; lab[1:7, 7:13] = 2
    >>> prob = np.eye(3, dtype=np.float32)[boundary_targets(lab)].transpose(2, 0, 1)   # (3, 8, 14) one-hot
    >>> model = CellModel(None, CellTrainConfig(distance_head=False, offset_head=False), {})
    >>> bool((model.postprocess(prob) == lab).all())
    True
    """

    def __init__(self, net, cfg, meta, overlap: float = 0.25, tta: bool = False, device: str = "auto",
                 diameter: float | None = None, rescale: bool = True, precision: str = "auto"):
        if net is not None:
            import torch

            # one memory format for every CellModel (2D networks train channels-last, and training chooses the
            # thresholds through a CellModel): under bf16 the formats round differently, enough to move a threshold
            # setting's tuning AP by 0.004; contiguous is the faster one here (benchmarks/cells_formats.py)
            net.to(memory_format=torch.contiguous_format)
        self.net, self.cfg, self.meta, self.overlap, self.tta = net, cfg, meta, overlap, tta
        self.precision = precision  # of the sliding window: auto (bf16 where the CPU computes it natively), fp32, ...
        self.device = device
        self.diameter = diameter  # the images' nucleus diameter in pixels, if known (else estimated per image)
        self.rescale = rescale  # native-scale models: resize images whose nuclei lie outside the training range

    @classmethod
    def load(cls, path, overlap: float = 0.25, tta: bool = False, device: str = "auto",
             diameter: float | None = None, rescale: bool = True, precision: str = "auto") -> "CellModel":
        """Load a run given as its folder, its ``model.json`` or its weights file (``model.pt``), safely
        (``weights_only=True``). The medseg/torch/MONAI versions it was trained with, where the run recorded them
        (runs from before did not), are in ``meta["versions"]``. ``rescale=False`` predicts every image of a
        native-scale model at its own scale (:meth:`scale_for`). ``precision``: of the sliding window (``auto``: bf16
        where the CPU computes it natively; ``fp32``)."""
        import torch

        from medseg.cells.saved_config import load_config
        from medseg.cells.train import build_cell_network
        from medseg.io.limits import check_archive_fits
        from medseg.train.artifact import check_window_fits, loaded_network

        config, weights = model_files(path)
        meta, cfg = load_config(config)
        if not weights.exists():
            raise InputError("cell model has no weights (model.pt): was training finished?", path=weights.parent)
        check_window_fits(cfg.base_filters, cfg.patch_size, config)
        check_archive_fits(weights)  # torch allocates each record's declared size before it inflates it
        try:  # unreadable weights: one message
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"cannot load model weights ({' '.join(str(exc).split())[:160]})", path=weights) from exc
        if isinstance(state, dict) and "optimizer" in state:  # a checkpoint, not the final (averaged) weights
            raise InputError("a training checkpoint, not the model's weights: give the run folder or its model.pt",
                             path=weights)
        if not isinstance(state, dict):
            raise InputError("cannot load model weights (the file holds no state dict)", path=weights)
        # weights loaded at once (none drawn), their names and shapes checked before the network is allocated
        net = loaded_network(lambda: build_cell_network(cfg), state, weights, "cannot load model weights").eval()
        return cls(net, cfg, meta, overlap, tta, device, diameter, rescale, precision)

    def scale_for(self, image: np.ndarray) -> float:
        """Resize factor for a 2D image (1: none). A model trained with ``diameter`` brings the image's nuclei to
        it; a native-scale model that recorded its training images' range of nucleus sizes
        (``meta["diameter_range"]``, :func:`medseg.cells.scale.diameter_range`) resizes only images whose nuclei
        lie outside that range, to its nearer end (unless ``rescale`` is off). The size is the known
        ``diameter`` or is measured on the model's own segmentation, once more after a resize."""
        from medseg.cells.scale import (agreed_scale, image_sizes, initial_diameter, into_range, resize_image,
                                        scale_to, scaled_shape)

        if image.ndim != 2:
            return 1.0
        if self.cfg.diameter:
            if self.diameter:
                return scale_to(self.cfg.diameter, self.diameter)
            # measured as a native-scale model with the range [diameter, inf) is: enlarged only when even the
            # area-weighted median is small. Starting from the Otsu estimate instead (before session 32) enlarged
            # textured DSB2018 images with large nuclei up to 4x (the Otsu mask finds the texture's blobs), where the
            # model, at that scale, shattered them into thousands of pieces that confirmed the guess
            ranges, measure = {m: (self.cfg.diameter, math.inf) for m in ("count", "area")}, "both"
        else:
            size_range = self.meta.get("diameter_range")
            if not (self.rescale and size_range):
                return 1.0
            if self.diameter:
                return into_range(self.diameter, *size_range)
            # runs trained before session 30 recorded the per-object range only, and are measured so
            measure = self.meta.get("diameter_measure", "count")
            ranges = {"count": size_range, "area": self.meta.get("diameter_range_area")}
        # float32 as probabilities() passes it, so that the final prediction at scale 1 is this cached pass
        native = self._probabilities(resize_image(image, image.shape))
        # sizes measured with the thresholds the tuning measured them with (runs from before session 39 recorded
        # none: their tuned thresholds), so that counting resizes each image as the tuning did
        size = dict(self.meta.get("size_thresholds") or {})
        # nuclei too large for the model come out in pieces, which understate their size; the Otsu mask's
        # estimate does not split them
        s = agreed_scale(image_sizes(self.postprocess(native, **size), floor=initial_diameter(image)), ranges, measure)
        if s == 1.0:
            return s
        # then measure with the model where it is reliable, at the first guess's scale (kept when the two agree
        # within 10 %: its maps are cached)
        sizes = image_sizes(self.postprocess(self._probabilities(resize_image(image, scaled_shape(image.shape, s))),
                                             **size), s)
        s2 = agreed_scale(sizes, ranges, measure) if sizes["count"] > 0 else s
        return s if abs(s2 / s - 1) <= 0.1 else s2

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

    def forget(self) -> None:
        """Drop the last image's maps and labels, kept for the next call on the same image (24 bytes per pixel)."""
        self._last = self._last_instances = None

    def _probabilities(self, image: np.ndarray) -> np.ndarray:
        import hashlib

        if not (image.ndim == 2 and self.diameter is None and (self.cfg.diameter or self.rescale)):
            return self._predict(image)
        # the scale estimate's pass is usually also the final one: remember the last image's maps
        key = (image.shape, hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest(),
               self.tta, self.overlap, self.precision)
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
                                          activation=None, precision=self.precision)

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
        # each part written into one output (concatenating the parts held the maps twice: 48 bytes per pixel)
        out = torch.empty((3 + c.distance_head + c.offset_head * c.spatial_dims, *logits.shape[1:]), dtype=logits.dtype)
        out[:3] = torch.softmax(logits[:3], 0)
        if c.distance_head:
            torch.sigmoid(logits[3:4], out=out[3:4])
        if c.offset_head:
            torch.mul(logits[-c.spatial_dims:], c.offset_scale, out=out[-c.spatial_dims:])
        return out.numpy()

    def postprocess(self, prob: np.ndarray, threshold: float | None = None,
                    seed_threshold: float | None = None, seeds: str | None = None, shape=None,
                    image: np.ndarray | None = None) -> np.ndarray:
        """Instances from :meth:`probabilities` by marker-controlled watershed (the run's thresholds and marker
        source unless given): markers are the cores ``distance > seed_threshold`` of the predicted distance map
        (``seeds="distance"``) or ``interior - boundary > seed_threshold`` (``"boundary"``); ``"votes"`` groups
        the pixels whose predicted offsets lead to the same centre instead (``seed_threshold``: the vote density a
        centre needs; :func:`medseg.postprocess.votes.vote_instances`); then small fragments join their
        neighbour across a border the network does not call boundary (``merge_boundary``,
        :func:`medseg.postprocess.merge.merge_weak_borders`). With ``shape``, the
        labels are resized (nearest neighbour) to it. With ``image`` (of that shape), objects no brighter than the
        background's noise are dropped (``min_snr``; :mod:`medseg.postprocess.contrast`), dark objects instead for
        a model trained on dark nuclei."""
        return self._finish(self._instances(prob, threshold, seed_threshold, seeds), shape, image)

    def _instances(self, prob: np.ndarray, threshold, seed_threshold, seeds) -> np.ndarray:
        c = self.cfg
        seeds = seeds or c.seeds
        # the size measurement of scale_for and the final segmentation of an image inside the model's size range
        # are the same watershed on the same (cached) maps: remember the last one
        key = (threshold, seed_threshold, seeds, c.threshold, c.seed_threshold, c.min_size_px, c.merge_boundary,
               c.merge_area_ratio)
        last = getattr(self, "_last_instances", None)
        if last is not None and last[0] is prob and last[1] == key:
            return last[2].copy()
        labels = self._watershed(prob, threshold, seed_threshold, seeds)
        if c.merge_boundary and c.merge_area_ratio:
            from medseg.postprocess.merge import merge_weak_borders

            labels = merge_weak_borders(labels, prob[2], c.merge_boundary, c.merge_area_ratio)
        self._last_instances = (prob, key, labels)
        return labels.copy()

    def _watershed(self, prob: np.ndarray, threshold, seed_threshold, seeds: str) -> np.ndarray:
        from medseg.postprocess.watershed import watershed_instances

        c = self.cfg
        if seeds == "distance" and not c.distance_head:
            raise InputError("seeds='distance' needs a model with a distance head", path=None)
        if seeds == "votes":
            if not c.offset_head:
                raise InputError("seeds='votes' needs a model with an offset head", path=None)
            from medseg.postprocess.votes import vote_instances

            return vote_instances(prob[1] + prob[2], prob[-c.spatial_dims:],
                                  threshold=c.threshold if threshold is None else threshold,
                                  min_votes=c.seed_threshold if seed_threshold is None else seed_threshold,
                                  min_size=c.min_size_px)
        return watershed_instances(prob[1] + prob[2], boundary=prob[2],
                                   distance=prob[3] if seeds == "distance" else None, spacing=None,
                                   threshold=c.threshold if threshold is None else threshold,
                                   seed_threshold=c.seed_threshold if seed_threshold is None else seed_threshold,
                                   min_size=c.min_size_px, min_seed_size=min(c.min_size_px, 4),
                                   keep_unseeded=False, markers=seeds)

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

    def z_scale(self, image: np.ndarray, spacing=None) -> float:
        """Resize factor along z that gives a 3D stack the z step, relative to its pixel size, of the stacks the
        model was trained on (``meta["spacing"]``); 1 for 2D images, without a spacing, for runs that recorded
        none, or within 5 %. A 3D model learns its training stacks' anisotropy: the same stack given with every
        slice repeated or every other slice scored AP@0.5 0.58 or 0.15 instead of 0.72."""
        trained = self.meta.get("spacing")
        from medseg.cells.scale import anisotropy

        if image.ndim != 3 or spacing is None or not trained or len(trained) != 3:
            return 1.0
        ratio = anisotropy(spacing) / anisotropy(trained)
        return 1.0 if abs(ratio - 1) <= 0.05 else float(ratio)

    def segment(self, image: np.ndarray, spacing=None) -> np.ndarray:
        """Instance labels of ``image`` (its shape); ``spacing`` (per axis) brings a 3D stack to the training
        stacks' z step first (:meth:`z_scale`)."""
        from medseg.cells.scale import resize_image

        zs = self.z_scale(image, spacing)
        if zs == 1.0:
            return self.postprocess(self.probabilities(image), shape=image.shape, image=image)
        resized = resize_image(image, (max(1, round(image.shape[0] * zs)), *image.shape[1:]))
        return self.postprocess(self.probabilities(resized, scale=1.0), shape=image.shape, image=image)



def model_files(path) -> tuple[Path, Path]:
    """``model.json`` and the weights file of a cell model given as its run folder, its ``model.json`` or its
    weights file (``.pt``; the run's ``model.json`` beside it).

    Parameters
    ----------
    path : path
        Run folder, ``model.json`` (need not exist yet) or ``.pt``/``.pth`` file (must exist).

    Returns
    -------
    (Path, Path)
        ``model.json`` and the weights file (whose existence is not checked for a folder or a ``.json``).

    Examples
    --------
    >>> [p.as_posix() for p in model_files("runs/cells/model.json")]
    ['runs/cells/model.json', 'runs/cells/model.pt']
    """
    p = Path(path)
    if p.is_dir():
        return p / "model.json", p / "model.pt"
    if p.suffix.lower() == ".json":
        return p, p.parent / "model.pt"
    if p.suffix.lower() in (".pt", ".pth"):
        if not p.exists():
            raise InputError("no such cell model weights file", path=p)
        return p.parent / "model.json", p
    if not p.exists():
        raise InputError("no such cell model (expected a run folder, its model.json or its model.pt)", path=p)
    raise InputError("not a cell model (expected a run folder, its model.json or its model.pt)", path=p)


# the classical mode's contrast test (medseg.postprocess.contrast): objects Otsu cuts from pure noise reach an SNR of
# about 3 at most, every classical object of the 428 DSB2018 images 3.6 at least (benchmarks/cells_classical_snr.py)
CLASSICAL_MIN_SNR = 3.0


@dataclass
class ClassicalSegmenter:
    """Threshold + distance-transform watershed with the nucleus size estimated per image (or a known in-plane
    ``diameter`` in pixels).

    ``segment(image, spacing=None)`` percentile-normalises the image and runs
    :func:`medseg.postprocess.classical.classical_instances`, then drops objects less than ``min_snr`` background
    noise sigmas brighter than the background (:func:`medseg.postprocess.contrast.remove_faint_instances`; 0 keeps
    all).

    Parameters
    ----------
    method : {"otsu", "local"}
        Global Otsu or local threshold.
    diameter : float, optional
        Typical nucleus diameter in pixels of the finer in-plane axis (default: estimated per image).
    min_snr : float
        The contrast test's threshold (default :data:`CLASSICAL_MIN_SNR`).

    Examples
    --------
    Two overlapping discs of radius 10 px:

    >>> yy, xx = np.mgrid[:40, :60]
    >>> img = 200.0 * ((np.hypot(yy - 20, xx - 20) < 10) | (np.hypot(yy - 20, xx - 37) < 10))
    >>> labels = ClassicalSegmenter().segment(img)
    >>> int(labels.max()), labels.dtype.name
    (2, 'uint16')
    >>> int(ClassicalSegmenter(diameter=20).segment(img, spacing=(0.5, 0.5)).max())
    2
    """

    method: str = "otsu"
    diameter: float | None = None
    min_snr: float = CLASSICAL_MIN_SNR

    def segment(self, image: np.ndarray, spacing=None) -> np.ndarray:
        from medseg.cells.data import percentile_normalize
        from medseg.postprocess.classical import classical_instances
        from medseg.postprocess.contrast import remove_faint_instances

        radius = None
        if self.diameter:  # pixels -> the physical units classical_instances works in
            radius = self.diameter / 2 * (float(np.min(spacing[-2:])) if spacing is not None else 1.0)
        labels = classical_instances(percentile_normalize(image), spacing=spacing, method=self.method, radius=radius)
        # a threshold splits any image in two: an empty field's noise would become hundreds of objects
        return remove_faint_instances(labels, image, self.min_snr) if self.min_snr else labels
