"""From a fingerprint to a plan: target spacing, normalisation, 2D/3D, patch, batch and width fitted to budgets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from medseg.errors import InputError
from medseg.infer.devices import parse_device
from medseg.infer.sliding_window import cpu_has_native_bf16
from medseg.plan.cost import estimate_cost, fit_patch, network_levels
from medseg.plan.fingerprint import Fingerprint, compute_fingerprint
from medseg.plan.plan import Normalisation, Plan
from medseg.system import total_ram_bytes
from medseg.train.dataset import Dataset, open_dataset

# Effective training throughput assumed when fitting to a time budget (forward+backward FLOP/s): rough,
# conservative assumptions for a 2-core CPU and a mid-range GPU (not calibrated yet); override with throughput=.
THROUGHPUT = {"cpu": 6e10, "cuda": 1.5e13}
SPEED_MARGIN = 4.0  # with a time budget: the epoch cap, as a multiple of the iterations THROUGHPUT predicts
ANISOTROPY = 3.0
ORIENTATION = "RAS"  # every case is brought to it (lossless): a model then does not depend on how files are stored
# Default memory budgets (GB) when make_plan is given none: a share of the machine's *total* memory, not of what
# is free right now, so that planning twice (or on every torchrun rank) gives the same plan. RAM: a quarter
# (the case cache may take 40 % of the free RAM, data loading and the OS the rest), at most 16 GB (beyond that a
# CPU is too slow for the patches it would allow). GPU: 85 % (CUDA context, cuDNN workspaces, fragmentation),
# at most 32 GB (larger GPUs make iterations faster, not the patch larger; as nnU-Net, which plans for a fixed
# budget). A GPU this machine does not have: the 8 GB of a mid-range card.
RAM_SHARE, RAM_CAP_GB = 0.25, 16.0
PLAN_SUFFIXES = (".yaml", ".yml")  # what `medseg train` takes as a plan/config file (any case)
GPU_SHARE, GPU_CAP_GB, GPU_ELSEWHERE_GB = 0.85, 32.0, 8.0


def target_spacing(fp: Fingerprint) -> list[float]:
    """Median spacing; for strongly anisotropic data the coarse axis takes the 10th percentile (nnU-Net).

    Strongly anisotropic: the coarsest median is over ``ANISOTROPY`` (3) times the next, which bounds it below.

    Parameters
    ----------
    fp : Fingerprint
        Its ``spacings`` (mm, per case) are used.

    Returns
    -------
    list of float
        Three spacings in mm, rounded to 4 decimals.

    Examples
    --------
    >>> target_spacing(Fingerprint([[1.0, 1.0, 1.0], [2.0, 1.0, 1.0]], [], ["CT"]))
    [1.5, 1.0, 1.0]
    >>> target_spacing(Fingerprint([[5.0, 1.0, 1.0], [5.0, 1.0, 1.0], [3.0, 1.0, 1.0]], [], ["CT"]))  # 3 + 0.2 x 2
    [3.4, 1.0, 1.0]
    """
    sp = np.asarray(fp.spacings, float)
    med = np.median(sp, axis=0)
    worst = int(np.argmax(med))
    others = [i for i in range(3) if i != worst]
    if med[worst] > ANISOTROPY * med[others].max():
        med[worst] = max(np.percentile(sp[:, worst], 10), med[others].max())
    return [round(float(s), 4) for s in med]


def normalisations(fp: Fingerprint, where: str | os.PathLike | None = None) -> list[Normalisation]:
    """CT channels: clip to foreground 0.5–99.5 percentiles and z-score with dataset stats; others: per case.

    Channels are told apart by name, as nnU-Net v2 tells them (any case): ``CT``; ``noNorm`` (left as they are);
    ``rescale_to_0_1`` (per case to [0, 1]); ``rgb_to_0_1`` (divided by 255); any other name is z-scored per case.

    Parameters
    ----------
    fp : Fingerprint
        Its ``channel_names`` and ``intensity`` statistics.
    where : path, optional
        The dataset, named by the ``InputError`` of a CT channel whose foreground has one intensity.

    Returns
    -------
    list of Normalisation
        One per channel.

    Raises
    ------
    InputError
        When a CT channel's foreground 0.5 and 99.5 percentiles are equal (a uniform or one-voxel foreground):
        clipped to [a, a], every image would be that one value (nnU-Net trains on it, all zeros after its z-score),
        and the plan's own check refuses such a clip.

    Examples
    --------
    >>> stats = {"mean": 40.0, "std": 60.0, "p00_5": -100.0, "p99_5": 200.0, "min": -1000.0, "max": 900.0}
    >>> ct, t2, raw = normalisations(Fingerprint([], [], ["CT", "T2", "noNorm"], [stats, stats, stats]))
    >>> ct.scheme, ct.clip, ct.mean, ct.std, t2.scheme, raw.scheme
    ('ct', (-100.0, 200.0), 40.0, 60.0, 'zscore', 'none')
    """
    out = []
    for name, st in zip(fp.channel_names, fp.intensity or [{}] * len(fp.channel_names)):
        if name.strip().upper() == "CT" and st:
            if not st["p00_5"] < st["p99_5"]:
                raise InputError(f"the foreground intensities of channel '{name}' are constant ({st['p00_5']:g} in at "
                                 "least 99 % of the foreground voxels sampled): a CT clip to their 0.5-99.5 "
                                 "percentiles would make every image that one value; check that the labels belong to "
                                 "the images, or name the channel other than CT in dataset.json (per-case z-score)",
                                 path=where)
            out.append(Normalisation("ct", (st["p00_5"], st["p99_5"]), st["mean"], max(st["std"], 1e-6)))
        else:
            out.append(Normalisation(_BY_NAME.get(name.strip().casefold(), "zscore")))
    return out


#: nnU-Net v2's channel names (``dataset.json``'s ``channel_names``) of its other schemes, casefolded
_BY_NAME = {"nonorm": "none", "rescale_to_0_1": "rescale_to_0_1", "rgb_to_0_1": "rgb_to_0_1"}


def default_memory_gb(device: str | torch.device = "cpu") -> float:
    """The memory budget (GB) :func:`make_plan` plans for when given none: see ``RAM_SHARE`` / ``GPU_SHARE``.

    Parameters
    ----------
    device : str or torch.device
        ``cpu``, ``cuda`` or ``cuda:N`` (the GPU whose memory counts; ``cuda`` is the current one; a GPU this
        machine does not have counts ``GPU_ELSEWHERE_GB``).

    Returns
    -------
    float
        GB, at least 0.5.

    Examples
    --------
    >>> 0.5 <= default_memory_gb("cpu") <= RAM_CAP_GB
    True
    """
    dev = parse_device(device, require_available=False)
    if dev.type == "cuda":
        total = gpu_total_bytes(dev.index)
        if total is None:
            return GPU_ELSEWHERE_GB  # planning here for a GPU machine elsewhere
        return max(0.5, min(GPU_SHARE * total / 1e9, GPU_CAP_GB))
    total = total_ram_bytes()
    if total is None:
        return 4.0  # unknown machine: the budget medseg planned for before it asked
    return max(0.5, min(RAM_SHARE * total / 1e9, RAM_CAP_GB))


def gpu_total_bytes(index: int | None) -> int | None:
    """Total memory of this machine's CUDA device ``index`` (``None``: the current one); ``None`` where it has no
    such device (CUDA absent, or ``cuda:3`` on a 1-GPU machine: the plan is for another machine).

    The device properties, not ``mem_get_info``: that creates a CUDA context on the device, and under torchrun every
    rank plans before ``ddp.setup`` picks its GPU, so each rank would hold a context on GPU 0.

    Parameters
    ----------
    index : int or None
        CUDA device number.

    Returns
    -------
    int or None
        Bytes.
    """
    if not torch.cuda.is_available():
        return None
    if index is None:
        index = torch.cuda.current_device()
    if not 0 <= index < torch.cuda.device_count():
        return None
    return int(torch.cuda.get_device_properties(index).total_memory)


def make_plan(dataset: str | os.PathLike | Dataset, device: str = "cpu", memory_gb: float | None = None,
              minutes: float | None = None, fingerprint: Fingerprint | None = None,
              throughput: float | None = None, min_iterations: int = 6000, progress: bool = False,
              output: str | os.PathLike | None = None) -> Plan:
    """Plan a dataset for ``device`` with a memory budget (GB) and, if given, a training time budget (minutes).

    ``device``: auto, cpu, cuda or cuda:N (checked for spelling only: the GPU may be on another machine).
    ``memory_gb``: default :func:`default_memory_gb` of ``device`` (one too small for the smallest patch the network
    runs on is an ``InputError``). With a time budget the network width and
    patch are reduced until at least ``min_iterations`` iterations fit (small shallow networks that see many
    more patches beat big ones that see few, on a CPU). The budget, not the epoch count, then ends training:
    ``max_epochs`` is a cap at :data:`SPEED_MARGIN` times the iterations ``throughput`` (FLOP/s; default
    :data:`THROUGHPUT` of the device) predicts, and validation runs at most about 20 times.
    ``output``: the plan is also written there (YAML); its name must end in .yaml or .yml (what ``medseg train``
    takes as a plan) and its folder exist, both checked before the dataset is read.

    Parameters
    ----------
    dataset : path or Dataset
        An MSD / nnU-Net dataset folder, or one already opened.
    device, memory_gb, minutes, throughput, min_iterations, output
        As above.
    fingerprint : Fingerprint, optional
        Computed from the dataset (:func:`compute_fingerprint`, with a progress bar if ``progress``) if not given.

    Returns
    -------
    Plan
        Validated. 2D when one axis of the target spacing is more than ``ANISOTROPY`` times the finest.

    Examples
    --------
    >>> from medseg.train.dataset import Dataset
    >>> ds = Dataset(Path("liver"), {"labels": {"0": "background", "1": "liver"}})
    >>> ct = {"mean": 40.0, "std": 60.0, "p00_5": -100.0, "p99_5": 200.0, "min": -1000.0, "max": 900.0}
    >>> fp = Fingerprint([[1.0, 1.0, 1.0]] * 2, [[40, 40, 40]] * 2, ["CT"], [ct], {0: 90000, 1: 38000})
    >>> plan = make_plan(ds, fingerprint=fp, memory_gb=4)
    >>> plan.spatial_dims, plan.target_spacing, plan.patch_size, plan.normalisation[0].scheme
    (3, [1.0, 1.0, 1.0], [40, 40, 40], 'ct')
    >>> fp.spacings = [[5.0, 1.0, 1.0]] * 2  # thick slices: a 2D plan on the in-plane axes
    >>> plan = make_plan(ds, fingerprint=fp, memory_gb=4)
    >>> plan.spatial_dims, plan.target_spacing, plan.patch_size
    (2, [5.0, 1.0, 1.0], [40, 40])
    """
    if output is not None:
        check_plan_name(output)
        if not Path(output).parent.is_dir():  # before the fingerprint (minutes on a large dataset), not after it
            raise InputError("output folder does not exist", path=Path(output).parent)
    for name, value in (("memory budget (GB)", memory_gb), ("time budget (minutes)", minutes)):
        if value is not None and not 0 < value < float("inf"):  # 0 meant no limit; a negative one an 8³ patch
            raise InputError(f"the {name} must be a positive number, got {value}")
    dev = parse_device(device, require_available=False)  # before the fingerprint: a typo fails at once
    ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
    fp = fingerprint or compute_fingerprint(ds, progress=progress, orientation=ORIENTATION)
    norms = normalisations(fp, where=ds.root)  # first: a CT foreground of one intensity is the data's problem
    spacing = target_spacing(fp)
    med_shape = np.median([np.asarray(s) * np.asarray(sp) / np.asarray(spacing)
                           for s, sp in zip(fp.shapes, fp.spacings)], axis=0)
    # 2D when one axis is much coarser than the others (thick slices): the in-plane axes carry the detail; not
    # when two axes are equally coarse (which one to slice would depend on the order of the axes)
    srt = sorted(spacing)
    spatial_dims = 2 if srt[2] > ANISOTROPY * srt[0] and not np.isclose(srt[2], srt[1]) else 3
    if memory_gb is None:
        memory_gb = default_memory_gb(dev)
    budget = memory_gb * 1e9 * 0.5  # half for activations, the rest for weights, optimiser, data
    base, batch = (32, 2) if spatial_dims == 3 else (32, 12)
    if spatial_dims == 3 and float(np.prod(med_shape)) < 64 ** 3 / 4:  # small volumes: several per batch
        batch = 4
    in_plane = [i for i in range(3) if i != int(np.argmax(spacing))]
    # 2D: the in-plane axes wherever the slice axis is (the network is built on them: build_from_plan)
    shape, sp = (med_shape, spacing) if spatial_dims == 3 else (med_shape[in_plane], [spacing[i] for i in in_plane])
    labels = {int(k): v for k, v in ds.labels.items()}
    # the output and loss maps grow with the classes (a 118-class CT), and a coarse axis is not down-sampled at first
    net = {"in_channels": len(fp.channel_names), "num_classes": max(labels) + 1}
    patch = fit_patch(shape, sp, spatial_dims, budget, base, batch, **net)
    need = estimate_cost(patch, base, spacing=sp, **net)[0] * batch
    if need > budget:  # not even the smallest patch the network runs on fits: a clear error, not a plan over it
        raise InputError(f"the memory budget of {memory_gb:g} GB is too small: the smallest patch the network runs "
                         f"on, {patch} with batch {batch}, needs about {2 * need / 1e9:.2g} GB")
    tp = throughput or THROUGHPUT[dev.type]
    iters_per_epoch, epochs = 250, 1000
    if minutes:
        # make room for min_iterations in the budget: narrower first, then a smaller patch
        for _ in range(50):
            _, flops = estimate_cost(patch, base, spacing=sp, **net)
            n_iter = minutes * 60 * tp / (flops * batch)
            if n_iter >= min_iterations or (base <= 16 and np.prod(patch) <= 32 ** spatial_dims):
                break
            if base > 16:
                base //= 2
            else:
                smaller = fit_patch(patch, sp, spatial_dims, budget, base, batch,
                                    max_voxels=float(np.prod(patch)) * 0.7, **net)
                if smaller == patch:
                    break
                patch = smaller
        # the budget ends training and the learning rate follows the elapsed time, so the epoch count is only a
        # cap: four times the estimate, so that a machine faster than THROUGHPUT assumes still uses all of its
        # budget (this CPU runs the demo's plan at ~190 GFLOP/s in bf16, THROUGHPUT says 60)
        epochs = max(1, int(np.ceil(SPEED_MARGIN * n_iter / iters_per_epoch)))
    # rare classes (< 1% of foreground voxels) get foreground-heavy sampling
    fg = {k: v for k, v in fp.class_voxels.items() if k != 0}
    rare = fg and min(fg.values()) < 0.01 * sum(fg.values())
    kernels, strides = network_levels(patch, sp)  # recorded: a later rule must not rebuild this plan's network
    plan = Plan(name=str(ds.meta.get("name", ds.root.name)), dataset=str(ds.root), channels=fp.channel_names,
                labels=labels, normalisation=norms, target_spacing=spacing, orientation=fp.orientation,
                spatial_dims=spatial_dims, patch_size=[int(p) for p in patch], batch_size=batch,
                base_filters=base, max_filters=320, kernel_sizes=kernels, strides=strides, max_epochs=epochs,
                iterations_per_epoch=iters_per_epoch,
                max_minutes=minutes, foreground_oversample=0.66 if rare else 0.33,
                # bf16 halves the CPU step where native (0.25 vs 0.51 s, RESULTS.md); emulated it is slower
                bf16=dev.type != "cuda" and cpu_has_native_bf16(),
                val_every=max(1, int(np.ceil(epochs / 20))))
    plan = plan.validate()
    if output is not None:
        plan.to_yaml(output)
    return plan


def check_plan_name(path: str | os.PathLike) -> None:
    """``InputError`` unless ``path`` ends in .yaml or .yml (any case): ``medseg train`` takes nothing else as a
    plan.

    Examples
    --------
    >>> check_plan_name("runs/plan.YAML")
    >>> check_plan_name("runs/plan")
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: runs/plan: a plan file name must end in .yaml or .yml (medseg train reads it by that)
    """
    if Path(path).suffix.lower() not in PLAN_SUFFIXES:
        raise InputError("a plan file name must end in .yaml or .yml (medseg train reads it by that)", path=path)


def load_plan(source: str | os.PathLike | Plan, device: str = "cpu", max_minutes: float | None = None,
              progress: bool = False) -> Plan:
    """What ``medseg train SOURCE`` trains: a dataset folder's plan, made as ``medseg plan DATASET --device D
    --max-minutes M`` makes it (so that a time budget also fits the network, not only stops the run), or a
    plan/config YAML as the user wrote it; a ``Plan`` is returned as it is.

    Parameters
    ----------
    source : path or Plan
        A dataset folder (with ``dataset.json``), a ``.yaml`` / ``.yml`` plan file, or a plan; anything else is an
        ``InputError``.
    device, max_minutes, progress
        For a dataset folder: as :func:`make_plan`'s ``device``, ``minutes`` and ``progress``.

    Returns
    -------
    Plan
        Validated; a dataset folder's names it in ``dataset``.

    Examples
    --------
    A dataset folder of two 16³ CT cases (spacing 2 x 1 x 1 mm), then the plan written as YAML and read back:

    >>> import json, tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from medseg.io.image import Image
    >>> from medseg.io.writers import write_image
    >>> root = Path(tempfile.mkdtemp())
    >>> for sub in ("imagesTr", "labelsTr"):
    ...     (root / sub).mkdir()
    >>> rng, affine = np.random.default_rng(0), np.diag([2.0, 1.0, 1.0, 1.0])
    >>> for i in range(2):
    ...     lab = np.zeros((16, 16, 16), np.uint8); lab[4:12, 4:12, 4:12] = 1
    ...     image = Image(100 * lab + rng.normal(0, 10, lab.shape), affine)  # CT: not one constant value
    ...     _ = write_image(image, root / "imagesTr" / f"c{i}_0000.nii.gz")
    ...     _ = write_image(Image(lab, affine), root / "labelsTr" / f"c{i}.nii.gz")
    >>> meta = {"channel_names": {"0": "CT"}, "labels": {"0": "background", "1": "liver"}}
    >>> _ = (root / "dataset.json").write_text(json.dumps(meta))
    >>> plan = load_plan(root)
    >>> plan.channels, plan.labels, plan.target_spacing, plan.patch_size, plan.normalisation[0].scheme
    (['CT'], {0: 'background', 1: 'liver'}, [2.0, 1.0, 1.0], [16, 16, 16], 'ct')
    >>> _ = plan.to_yaml(root / "plan.yaml")
    >>> load_plan(root / "plan.yaml").patch_size, load_plan(plan) is plan
    ([16, 16, 16], True)
    """
    if isinstance(source, Plan):
        return source
    source = Path(source)
    if source.is_dir() and (source / "dataset.json").is_file():
        return make_plan(source, device=device, minutes=max_minutes, progress=progress)
    if source.is_file() and source.suffix.lower() in PLAN_SUFFIXES:
        return Plan.from_yaml(source)
    raise InputError("expected a dataset folder (with dataset.json) or a plan/config .yaml file", path=source)
