"""Prediction in native geometry: preprocessing identical to training, sliding windows, resampling back.

The output label map has exactly the input's shape and affine (the network grid is resized back by shape).
The sliding window hands its probabilities over plane by plane to a :class:`~medseg.infer.native.PlaneResampler`,
which resizes them to the input's grid and keeps only the argmax, so neither the network-grid nor the
full-resolution probabilities of all classes are ever held at once (bounded RAM on large CTs).
"""

from __future__ import annotations

import sys
import warnings
from typing import Callable

import numpy as np
import torch

from medseg.infer.native import PlaneResampler
from medseg.io.image import Image
from medseg.plan.plan import Plan
from medseg.train.preprocess import check_grid_fits, preprocess


def sliding_window(network: torch.nn.Module, x: torch.Tensor, patch_size, overlap: float = 0.5,
                   batch_size: int = 2, device: str | torch.device = "cpu", bf16: bool = False, tta=False,
                   sink=None, num_classes: int | None = None) -> torch.Tensor | None:
    """Softmax probabilities (K, *S) of a (C, *S) volume by Gaussian-blended sliding windows
    (:func:`medseg.infer.sliding_window.sliding_window_predict`); with ``sink``, handed over plane by plane.

    Parameters
    ----------
    network : torch.nn.Module
        Maps ``(B, C, *patch)`` to logits ``(B, K, *patch)``; a 2D network (``spatial_dims == 2``) with a
        ``patch_size`` of ``[1, h, w]`` runs slice by slice on a 3D volume.
    x : torch.Tensor
        Normalised ``(C, *S)`` volume on the network's grid.
    patch_size : sequence of int
        Window size (a leading 1 for 2D networks applied slice by slice).
    overlap : float
        Fraction of a window shared with its neighbour, in [0, 1).
    batch_size : int
        Windows per forward pass.
    device : str or torch.device
        Where the network runs: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`medseg.infer.devices.parse_device`).
    bf16 : bool
        bf16 autocast on CPUs that compute it natively (CUDA always uses fp16 AMP).
    tta : bool or sequence of int
        The spatial axes to mirror (logits of the mirrored windows averaged, as nnU-Net does).
    sink : callable, optional
        Receives ``(part, first)`` runs of finished planes instead of a returned tensor.
    num_classes : int, optional
        ``K``, if known.

    Returns
    -------
    torch.Tensor or None
        ``(K, *S)`` float32 probabilities, or None when ``sink`` took them.

    Examples
    --------
    >>> p = sliding_window(torch.nn.Conv3d(1, 3, 1), torch.rand(1, 10, 8, 8), [8, 8, 8])
    >>> p.shape, bool(torch.allclose(p.sum(0), torch.ones(10, 8, 8)))
    (torch.Size([3, 10, 8, 8]), True)
    """
    from medseg.infer.devices import parse_device
    from medseg.infer.sliding_window import cpu_has_native_bf16, sliding_window_predict

    # as the CLI's --device and sliding_window_predict read it: "auto" is a device here too, "gpu" an InputError
    device = parse_device(device)
    two_d = len(patch_size) == x.ndim - 1 and patch_size[0] == 1 and x.ndim == 4 and _is_2d(network)

    def slice_by_slice(batch):  # (B, C, 1, H, W) windows through a 2D network
        return network(batch[:, :, 0])[:, :, None]

    precision = "auto" if device.type == "cuda" else ("bf16" if bf16 and cpu_has_native_bf16() else "fp32")
    with torch.no_grad():  # not inference_mode: its tensors would poison a later training step
        return sliding_window_predict(slice_by_slice if two_d else network, x, patch_size, overlap=overlap,
                                      tta=tta, batch_size=batch_size, device=device, output="probabilities",
                                      precision=precision, sink=sink, num_classes=num_classes)


def _is_2d(network) -> bool:
    return getattr(network, "spatial_dims", 3) == 2


def resolve_tta(plan: Plan, tta: bool | None = None, asked_as: str = "tta=True",
                warn: Callable[[str], None] | None = None) -> tuple[bool, str]:
    """Whether mirroring TTA applies, and a one-line note on how the prediction was made.

    TTA mirrors only the plan's ``augment.flip_axes``: mirroring an axis the model never saw mirrored is out of
    distribution and swaps classes defined along it (anterior/posterior hippocampus, RESULTS.md: Dice 0.86 →
    0.52). When TTA is asked for (``tta``, or the plan's ``tta`` when ``tta`` is None) but the plan has no flip
    axes, it is not applied and ``warn`` gets one line saying so (default: ``warnings.warn``).

    Parameters
    ----------
    plan : Plan
        The model's plan (``tta`` default, ``augment.flip_axes``).
    tta : bool or None
        The request; None takes the plan's ``tta``.
    asked_as : str
        How the caller spells an explicit request, named in the warning (the CLI: ``--tta``).
    warn : callable, optional
        Receives the warning line.

    Examples
    --------
    >>> from medseg.plan.plan import Plan
    >>> plan = Plan(channels=["CT"], labels={0: "background", 1: "a"}, augment={"flip_axes": [0, 1]})
    >>> resolve_tta(plan, True)
    (True, 'medseg predict: mirroring TTA over axes [0, 1]')
    """
    wanted = plan.tta if tta is None else bool(tta)
    axes = _flip_axes(plan)
    if wanted and not axes:
        who = asked_as if tta else "plan tta: true"
        (warn or _warn_caller)(f"{who}: the model was trained without mirroring (plan augment.flip_axes is empty); "
                               "predicting without TTA")
        return False, "medseg predict: no TTA (asked for, but the model was trained without mirroring)"
    return wanted, (f"medseg predict: mirroring TTA over axes {axes}" if wanted else "medseg predict: no TTA")


def _flip_axes(plan: Plan) -> list[int]:
    return [int(a) for a in (plan.augment.get("flip_axes") or [])]


def _warn_caller(message: str) -> None:
    """``warnings.warn`` attributed to the first caller outside this module (the user's line, once per line)."""
    level, frame = 2, sys._getframe(1)  # level 2: the caller of _warn_caller
    while frame is not None and frame.f_code.co_filename == __file__:
        level, frame = level + 1, frame.f_back
    warnings.warn(message, UserWarning, stacklevel=level)


def predict_labels(network: torch.nn.Module, plan: Plan, array: np.ndarray, spacing, overlap=None,
                   tta: bool | None = None, device="cpu", batch_size: int = 2, probabilities: bool = False,
                   spill_dir=None, prob_axes=None):
    """Labels on the grid of a channels-first ``array`` (and its class probabilities if asked).

    The array is preprocessed as in training (:func:`medseg.train.preprocess.preprocess`), predicted on the plan's
    grid and resized back plane by plane (:class:`~medseg.infer.native.PlaneResampler`). Mirroring TTA covers the
    plan's flip axes (the only ones the model was trained to be invariant to); asked for on a plan without any, it
    is not applied and a warning says so (:func:`resolve_tta`).

    Parameters
    ----------
    network : torch.nn.Module
        The trained network (:meth:`medseg.train.artifact.ModelArtifact.build`).
    plan : Plan
        Its plan (normalisation, target spacing, patch, classes).
    array : ndarray
        ``(C, *S)`` image, C the plan's channels.
    spacing : sequence of float
        Voxel size of ``array`` in mm.
    overlap, tta : optional
        Default: the plan's.
    device : str or torch.device
        Where the network runs (``auto``: CUDA when available, else the CPU).
    batch_size : int
        Windows per forward pass.
    probabilities : bool
        Also return the class probabilities.
    spill_dir : path, optional
        Folder of the probabilities' temporary file (default: the system's temporary folder).
    prob_axes : sequence of int, optional
        Axis ``j`` of ``array``'s grid is axis ``prob_axes[j]`` of the probabilities (their file's layout: the
        order of the input that ``array`` was transposed from, so that it is written out contiguously).

    Returns
    -------
    labels : ndarray
        uint8 (int32 above 256 classes), shape ``array.shape[1:]``.
    probabilities : ndarray or None
        float32 ``(K, *array.shape[1:])`` (axes permuted by ``prob_axes``), read-only and mapped from a temporary
        file in ``spill_dir`` (see :class:`~medseg.infer.native.ProbabilitySpill`); None unless asked for.

    Examples
    --------
    A stand-in network whose class 1 logit is the normalised intensity labels the voxels above the mean:

    >>> net = lambda x: torch.cat([torch.zeros_like(x), x], 1)  # logits (B, 2, *patch)
    >>> image = np.zeros((1, 8, 8, 8), np.float32)
    >>> image[0, :4] = 1
    >>> lab, _ = predict_labels(net, Plan(patch_size=[8, 8, 8]), image, (2.0, 1.0, 1.0))  # net sees 16 x 8 x 8
    >>> lab.shape, lab.dtype, int(lab.sum())
    ((8, 8, 8), dtype('uint8'), 256)
    """
    tta, _ = resolve_tta(plan, tta)
    x, _ = preprocess(array, spacing, plan)
    overlap = plan.overlap if overlap is None else overlap
    patch = list(plan.patch_size)
    shape = tuple(array.shape[1:])
    flips = _flip_axes(plan) if tta else []
    if plan.spatial_dims == 2:  # slices first; flip axes of 2D plans are in-plane axes of the slice
        ax = plan.slice_axis
        x = x.movedim(ax + 1, 1)
        patch = [1, *patch]
        flips = [a + 1 for a in flips]
        shape = (shape[ax], *[s for i, s in enumerate(shape) if i != ax])
    # the probability file keeps the axis order predicted in (the plan's orientation): written in runs, read
    # contiguously (2D: slices first); an input transposed to it is restored as a strided view
    file_axes = [ax, *[i for i in range(3) if i != ax]] if plan.spatial_dims == 2 else [0, 1, 2]
    if prob_axes is not None:
        file_axes = [int(prob_axes[a]) for a in file_axes]
    out = PlaneResampler(x.shape[1:], shape, plan.num_classes, keep_probabilities=probabilities, spill_dir=spill_dir,
                         file_axes=file_axes)
    sliding_window(network, x, patch, overlap, batch_size, device, plan.bf16, tta=flips or False, sink=out.add,
                   num_classes=plan.num_classes)
    lab = np.moveaxis(out.labels, 0, ax) if plan.spatial_dims == 2 else out.labels
    return lab, out.probabilities


def predict_image(network: torch.nn.Module, plan: Plan, image: Image, overlap=None, tta=None, device="cpu",
                  batch_size: int = 2, probabilities: bool = False, largest_component: bool = False,
                  min_size_mm3: float = 0.0, spill_dir=None):
    """Predict one ``Image`` (channels-first for multi-channel plans) on exactly the input's grid.

    Parameters
    ----------
    network, plan
        As in :func:`predict_labels`.
    image : Image
        A 3D volume (2D plans, too, predict volumes slice by slice), finite, with the plan's channels.
    overlap, tta, device, batch_size, probabilities, spill_dir
        As in :func:`predict_labels` (``tta`` resolved by :func:`resolve_tta`).
    largest_component, min_size_mm3
        Post-processing of the labels (:func:`postprocess_labels`), done in the plan's ``orientation`` before the
        labels go back to the input's axis order, so that the same volume stored flipped or transposed keeps the
        same voxels (a tie between equally large components goes to the first in that order); a voxel's volume is
        ``|det|`` of the affine, which a sheared (gantry-tilted) grid's voxels have.

    Returns
    -------
    labels : Image
        The label map, with the input's affine and the plan's label names in ``meta["labels"]``.
    probabilities : Image or None
        ``(K, *image.shape)`` float32, channels first, when ``probabilities``.

    Examples
    --------
    >>> img = Image(np.random.rand(6, 8, 8).astype(np.float32), np.diag([2.0, 1.0, 1.0, 1.0]))
    >>> lab, _ = predict_image(torch.nn.Conv3d(1, 2, 1), Plan(patch_size=[8, 8, 8]), img)
    >>> lab.shape, bool(np.array_equal(lab.affine, img.affine))
    ((6, 8, 8), True)
    """
    from medseg.errors import InputError
    from medseg.io.readers import check_finite

    if isinstance(image, np.ndarray):  # the labels go back onto the image's grid: it needs one
        raise TypeError("predict_image needs a medseg.io.Image (the array with its affine), not a bare array"
                        ": wrap it as Image(array, affine)")
    source = image.meta.get("source")
    if image.ndim != 3:  # 2D plans, too, predict volumes slice by slice
        raise InputError(f"expected a 3D volume, got {image.ndim}D (shape {image.shape})", path=source)
    check_finite(image, source)
    arr = image.array if image.channels_first else image.array[None]
    if arr.shape[0] != plan.in_channels:
        raise InputError(f"image has {arr.shape[0]} channel(s), the model needs {plan.in_channels} "
                         f"({', '.join(plan.channels)})", path=image.meta.get("source"))
    back, spacing = None, image.spacing
    if plan.orientation is not None:  # the axis order the model was trained in; mapped back below, losslessly
        from medseg.io.orientation import reorient, restore

        work, back = reorient(Image(arr, image.affine, {}, True), plan.orientation)
        arr, spacing = work.array, work.spacing
    check_grid_fits(arr.shape, spacing, plan, source)
    # probabilities are laid out in the input's axis order (written out contiguously); only flips remain then
    lab, prob = predict_labels(network, plan, arr, spacing, overlap, tta, device, batch_size, probabilities,
                               spill_dir, prob_axes=None if back is None else back[:, 0].astype(int))
    if largest_component or min_size_mm3:  # in the plan's axis order: ties and volumes as for any storage of it
        # |det|, not the product of the spacings: a sheared grid's voxels are smaller (gantry tilt)
        lab = postprocess_labels(lab, spacing, largest_component, min_size_mm3, voxel_volume=image.voxel_volume_mm3)
    if back is not None:
        lab = np.ascontiguousarray(restore(lab, back))
        flips = tuple(1 + int(a) for a, f in back if f < 0)
        prob = np.flip(prob, flips) if prob is not None and flips else prob
    from medseg.io.writers import label_dtype

    codes = {"nifti_codes": image.meta["nifti_codes"]} if "nifti_codes" in image.meta else {}
    out = Image(lab.astype(label_dtype(max(plan.labels)), copy=False), image.affine.copy(),
                {"source": image.meta.get("source"), "labels": plan.labels, **codes})
    pimg = Image(prob, image.affine.copy(), dict(codes), True) if prob is not None else None
    return out, pimg


def postprocess_labels(lab: np.ndarray, spacing, largest_component: bool, min_size_mm3: float,
                       voxel_volume: float | None = None) -> np.ndarray:
    """Keep the largest component per class and/or remove components smaller than ``min_size_mm3``
    (full connectivity; see :mod:`medseg.postprocess.components`).

    Parameters
    ----------
    lab : ndarray of int
        Label map, 0 is background.
    spacing : sequence of float
        Voxel size in mm per axis.
    largest_component : bool
        Keep only the largest component of each class.
    min_size_mm3 : float
        Remove components whose volume is below this (0: keep all).
    voxel_volume : float, optional
        One voxel's volume in mm³ (default: the product of ``spacing``, which a sheared grid's voxels are not:
        :attr:`medseg.io.image.Image.voxel_volume_mm3`).

    Returns
    -------
    ndarray
        Same shape and dtype as ``lab``; removed voxels are 0.

    Examples
    --------
    >>> lab = np.array([[1, 1, 0, 1, 0, 2]])
    >>> postprocess_labels(lab, (1.0, 1.0), True, 0.0).tolist()
    [[1, 1, 0, 0, 0, 2]]
    >>> postprocess_labels(lab, (1.0, 1.0), False, 2.0).tolist()  # components under 2 mm² go
    [[1, 1, 0, 0, 0, 0]]
    """
    from medseg.postprocess import components as pc

    if largest_component:
        lab = pc.keep_largest_component(lab)
    if min_size_mm3:
        lab = pc.remove_small_components(lab, min_size_mm3, spacing=spacing, voxel_volume=voxel_volume)
    return lab
