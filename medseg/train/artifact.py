"""The model artifact: one self-describing file (``model.pt``) with plan, label names, weights and versions.

It holds only tensors, numbers, strings, lists and dicts, so it loads with ``torch.load(weights_only=True)``.
An ensemble (``medseg.train.ensemble``) is the same file with the weights of several networks of one plan
(``members``) instead of one ``state_dict``; ``build`` then returns a network that averages their probabilities.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from medseg.cpu import built_without_drawing, ignored_warnings
from medseg.errors import InputError
from medseg.io.atomic import atomic_path
from medseg.io.limits import check_archive_fits
from medseg.plan.plan import Plan

FORMAT = "medseg-model"
MODEL_FILE = "model.pt"


def versions() -> dict[str, str]:
    """The versions recorded in a model file: medseg, MONAI, PyTorch and Python.

    Returns
    -------
    dict of str to str

    Examples
    --------
    >>> sorted(versions())
    ['medseg', 'monai', 'python', 'torch']
    """
    import monai

    import medseg

    return {"medseg": str(medseg.__version__), "monai": str(monai.__version__), "torch": str(torch.__version__),
            "python": platform.python_version()}


@dataclass
class ModelArtifact:
    """A trained model: plan + weights (+ where it came from).

    Attributes
    ----------
    plan : Plan
        The plan it was trained with (network, preprocessing, labels).
    state_dict : dict
        The weights (an ensemble: its first member's).
    info : dict
        Training record (``epochs``, ``iterations``, ``val_dice``, ...), ``versions`` and, once loaded, ``path``.
    members : list of dict or None
        An ensemble's weights, one state dict per network.

    Examples
    --------
    >>> plan = Plan(spatial_dims=2, patch_size=[16, 16], base_filters=4, max_filters=16)
    >>> art = ModelArtifact(plan, build_from_plan(plan).state_dict(), {})
    >>> art.build()(torch.zeros(1, 1, 16, 16)).shape
    torch.Size([1, 2, 16, 16])
    """

    plan: Plan
    state_dict: dict
    info: dict
    members: list[dict] | None = None  # an ensemble's weights, one state dict per network (state_dict: the first)

    def build(self) -> torch.nn.Module:
        """The network with its weights, in eval mode (an ensemble: one module averaging its members)."""
        check_window_fits(self.plan.base_filters, self.plan.patch_size, self.info.get("path"))
        nets = [self._build_one(sd) for sd in (self.members or [self.state_dict])]
        if len(nets) == 1:
            return nets[0]
        from medseg.train.ensemble import SoftmaxEnsemble

        return SoftmaxEnsemble(nets).eval()

    def _build_one(self, state_dict: dict) -> torch.nn.Module:
        # strictly, but for the deep-supervision heads training had: a weight left over (a residual block's 1x1
        # convolution, another level) was dropped silently, and a shape mismatch was a traceback, exit 1
        heads = set()
        if self.plan.deep_supervision:  # their names only: built on the meta device (no memory, no weights drawn)
            with torch.device("meta"):
                heads = (set(build_from_plan(self.plan, deep_supervision=True).state_dict())
                         - set(build_from_plan(self.plan, deep_supervision=False).state_dict()))
        weights = {k: v for k, v in state_dict.items() if k not in heads}
        return loaded_network(lambda: build_from_plan(self.plan, deep_supervision=False), weights,
                              self.info.get("path"), "model weights do not match the plan's network").eval()

    @property
    def labels(self) -> dict[int, str]:
        """Label value → name, from the plan."""
        return self.plan.labels


def loaded_network(build, state_dict: dict, path, problem: str) -> torch.nn.Module:
    """The module ``build()`` makes, with ``state_dict`` loaded strictly and its initial weights never drawn (so
    that loading a model leaves the caller's random stream where it was).

    The names and shapes are checked on the meta device before any parameter is allocated: a model file whose plan
    asks for another network than its weights (``base_filters: 1000000``) is ``InputError`` ``problem`` in one
    line, not terabytes asked of the allocator. Weights that match take no more memory than they did loaded.

    Examples
    --------
    >>> net = loaded_network(lambda: torch.nn.Linear(2, 3), torch.nn.Linear(2, 3).state_dict(), "m.pt", "mismatch")
    >>> loaded_network(lambda: torch.nn.Linear(2, 10**7), net.state_dict(), "m.pt", "mismatch")
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: m.pt: mismatch (Error(s) in loading state_dict for Linear: size mismatch for weight: ...
    """
    with torch.device("meta"):
        shell = build()
    try:
        with ignored_warnings(UserWarning):  # torch notes that copying into meta tensors is a no-op: it is meant
            shell.load_state_dict(state_dict)
        net = built_without_drawing(lambda: shell)
        net.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise InputError(f"{problem} ({' '.join(str(exc).split())[:200]})", path=path) from None
    return net


def check_window_fits(filters: int, patch, path, batch: int = 1) -> None:
    """``InputError`` when ``batch`` windows' first feature maps (``batch x filters x patch`` float32 values, a small
    part of what a step holds) exceed what this process can allocate: a model file's ``patch_size`` of 2**20 x 2**20
    made torch ask for 128 TiB, a plan's ``batch_size: 1000000000`` trained until the machine killed it. A floor, not
    an estimate: a plan it passes may still not fit.

    Examples
    --------
    >>> check_window_fits(32, [128, 128, 128], "model.pt")  # 256 MiB
    >>> check_window_fits(32, [2**20, 2**20], "model.pt")
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: model.pt: patch 1048576 x 1048576 with 32 base filters needs 128.0 TiB for one ...
    """
    from medseg.io.limits import size_text
    from medseg.system import allocatable_memory

    need = 4 * int(batch) * int(filters) * math.prod(int(p) for p in patch)
    room = allocatable_memory()
    if need > room:
        what = "one window's" if batch == 1 else f"a batch's (batch_size {int(batch)})"
        raise InputError(f"patch {' x '.join(str(int(p)) for p in patch)} with {int(filters)} base filters needs "
                         f"{size_text(need)} for {what} first feature maps alone, more than the "
                         f"{size_text(room)} of memory available: a damaged or hostile model, or one too large for "
                         "this machine", path=path)


def build_from_plan(plan: Plan, deep_supervision: bool | None = None) -> torch.nn.Module:
    """The plan's network, untrained (:func:`medseg.train.network.build_network`).

    Parameters
    ----------
    plan : Plan
        Channels, classes, patch, spacing (2D plans: the in-plane axes), width, block type, and the levels'
        kernel sizes and strides where the plan records them.
    deep_supervision : bool, optional
        Override the plan's (prediction builds without).

    Returns
    -------
    torch.nn.Module
        A MONAI DynUNet.

    Examples
    --------
    >>> plan = Plan(spatial_dims=2, patch_size=[16, 16], base_filters=4, max_filters=16)
    >>> build_from_plan(plan)(torch.zeros(1, 1, 16, 16)).shape  # 1 channel in, 2 classes out
    torch.Size([1, 2, 16, 16])
    """
    from medseg.train.network import build_network

    return build_network(plan.spatial_dims, plan.in_channels, plan.num_classes, plan.patch_size,
                         plan.network_spacing, base_filters=plan.base_filters, max_filters=plan.max_filters,
                         deep_supervision=plan.deep_supervision if deep_supervision is None else deep_supervision,
                         residual=plan.residual, kernel_sizes=plan.kernel_sizes, strides=plan.strides)


def strip_ddp(state_dict: dict) -> dict:
    """The state dict without DistributedDataParallel's ``module.`` key prefix (others are kept).

    Examples
    --------
    >>> strip_ddp({"module.conv.weight": 1, "head.bias": 2})
    {'conv.weight': 1, 'head.bias': 2}
    """
    return {k[7:] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def save_model(path: str | os.PathLike, plan: Plan, state_dict: dict | list[dict], protect=(), **info) -> Path:
    """Write the artifact atomically; a list of state dicts makes an ensemble of that many networks.

    Parameters
    ----------
    path : path
        The file to write (``model.pt``).
    plan : Plan
        The plan the weights belong to.
    state_dict : dict or list of dict
        The weights (DDP's ``module.`` prefix is stripped, tensors are moved to the CPU), or an ensemble's.
    protect : iterable of path
        Input files it must not replace.
    **info
        Stored as the artifact's ``info`` (numbers, strings, lists, dicts).

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> plan = Plan(spatial_dims=2, patch_size=[16, 16], base_filters=4, max_filters=16)
    >>> weights = build_from_plan(plan).state_dict()
    >>> path = save_model(Path(tempfile.mkdtemp()) / "model.pt", plan, [weights, weights])
    >>> len(load_model(path).members)
    2
    """
    path = Path(path)

    def cpu(sd):
        return {k: v.detach().cpu() for k, v in strip_ddp(sd).items()}

    weights = ({"members": [cpu(sd) for sd in state_dict]} if isinstance(state_dict, list)
               else {"state_dict": cpu(state_dict)})
    payload = {"format": FORMAT, "format_version": 1, "plan": plan.to_dict(),
               "labels": {int(k): v for k, v in plan.labels.items()}, **weights,
               "versions": versions(), "info": info}
    with atomic_path(path, protect=protect) as tmp:
        torch.save(payload, tmp)
    return path


def load_model(path: str | os.PathLike) -> ModelArtifact:
    """Load ``model.pt`` (or a run folder holding one) safely (``weights_only=True``).

    Parameters
    ----------
    path : path
        A model file or a run folder; anything that is not a medseg model is an ``InputError``.

    Returns
    -------
    ModelArtifact
        Its ``info`` holds the saved ``info``, the ``versions`` and the ``path`` loaded.

    Examples
    --------
    >>> import tempfile
    >>> plan = Plan(spatial_dims=2, patch_size=[16, 16], base_filters=4, max_filters=16)
    >>> run = Path(tempfile.mkdtemp())
    >>> _ = save_model(run / "model.pt", plan, build_from_plan(plan).state_dict(), epochs=3)
    >>> art = load_model(run)
    >>> art.plan.patch_size, art.info["epochs"], art.members
    ([16, 16], 3, None)
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise InputError("no model here (expected a model.pt file or a run folder with one)", path=path)
    check_archive_fits(path)  # torch allocates each record's declared size before it inflates it
    try:
        with ignored_warnings():  # torch's notes on pickle protocols: the one-line error below says it all
            d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights only" in str(exc).lower():  # torch's text goes on to advise weights_only=False: never
            raise InputError("not a medseg model: the file holds Python objects other than tensors, which are "
                             "never unpickled", path=path) from None
        raise InputError(f"cannot load model ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})",
                         path=path) from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise InputError("not a medseg model file", path=path)
    plan = saved_plan(d["plan"], where=path)
    members = d.get("members")
    if not (isinstance(members, list) and members and all(isinstance(m, dict) for m in members)):
        members = None
        if not isinstance(d.get("state_dict"), dict):
            raise InputError("model file holds no weights", path=path)
    info = {"versions": d.get("versions", {}), **d.get("info", {}), "path": str(path)}
    return ModelArtifact(plan, members[0] if members else d["state_dict"], info, members)


# settings that only training reads: a model saved with a value today's plan checks refuse still predicts as it did
TRAINING_ONLY = ("name", "dataset", "batch_size", "loss", "class_weights", "optimizer", "learning_rate",
                 "weight_decay", "ema", "max_epochs", "iterations_per_epoch", "max_minutes", "foreground_oversample",
                 "augment", "val_every", "num_folds", "fold", "seed", "ensemble", "num_threads", "cache", "cache_dir")


def saved_plan(d: dict, where=None) -> Plan:
    """The plan a model file holds, validated; one an earlier medseg accepted and trained with, but today's checks
    refuse, is read as that version used it: numbers on a normalisation other than ``ct`` dropped (it ignored
    them) and a refused training-only setting (``TRAINING_ONLY``: ``max_minutes: .inf``, an unknown ``augment``
    key, ...) at its default, since prediction reads neither. Anything else is refused as before.

    Examples
    --------
    >>> plan = Plan(spatial_dims=2, patch_size=[16, 16], base_filters=4, max_filters=16).to_dict()
    >>> old = {**plan, "max_minutes": float("inf"), "normalisation": [{"scheme": "zscore", "clip": [0.0, 9.0]}]}
    >>> p = saved_plan(old)
    >>> p.max_minutes, p.normalisation[0].clip, p.patch_size
    (None, None, [16, 16])
    """
    try:
        return Plan.from_dict(d, where=where)
    except InputError as exc:
        refused = exc
    if not isinstance(d, dict):
        raise refused
    norms = d.get("normalisation")
    if isinstance(norms, list):  # versions before session 46 z-scored such a channel without its numbers
        norms = [{**n, "clip": None, "mean": None, "std": None}
                 if isinstance(n, dict) and n.get("scheme") != "ct" else n for n in norms]
    core = {k: v for k, v in d.items() if k not in TRAINING_ONLY}
    core = {**core, "normalisation": norms} if "normalisation" in d else core
    Plan.from_dict(core, where=where)  # a setting prediction reads is refused as it is in a plan file
    kept = {k: d[k] for k in TRAINING_ONLY if k in d and _valid(core, k, d[k])}
    return Plan.from_dict({**core, **kept}, where=where)


def _valid(core: dict, key: str, value) -> bool:
    try:
        Plan.from_dict({**core, key: value})
    except InputError:
        return False
    return True
