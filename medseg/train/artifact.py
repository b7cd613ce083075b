"""The model artifact: one self-describing file (``model.pt``) with plan, label names, weights and versions.

It holds only tensors, numbers, strings, lists and dicts, so it loads with ``torch.load(weights_only=True)``.
An ensemble (``medseg.train.ensemble``) is the same file with the weights of several networks of one plan
(``members``) instead of one ``state_dict``; ``build`` then returns a network that averages their probabilities.
"""

from __future__ import annotations

import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from medseg.errors import InputError
from medseg.io.atomic import atomic_path
from medseg.plan.plan import Plan

FORMAT = "medseg-model"
MODEL_FILE = "model.pt"


def versions() -> dict[str, str]:
    import monai

    import medseg

    return {"medseg": str(medseg.__version__), "monai": str(monai.__version__), "torch": str(torch.__version__),
            "python": platform.python_version()}


@dataclass
class ModelArtifact:
    """A trained model: plan + weights (+ where it came from)."""

    plan: Plan
    state_dict: dict
    info: dict
    members: list[dict] | None = None  # an ensemble's weights, one state dict per network (state_dict: the first)

    def build(self) -> torch.nn.Module:
        """The network with its weights, in eval mode (an ensemble: one module averaging its members)."""
        nets = [self._build_one(sd) for sd in (self.members or [self.state_dict])]
        if len(nets) == 1:
            return nets[0]
        from medseg.train.ensemble import SoftmaxEnsemble

        return SoftmaxEnsemble(nets).eval()

    def _build_one(self, state_dict: dict) -> torch.nn.Module:
        net = build_from_plan(self.plan, deep_supervision=False)
        missing, unexpected = net.load_state_dict(state_dict, strict=False)
        if [m for m in missing if "deep_supervision" not in m and "heads" not in m]:
            raise InputError(f"model weights do not match the plan (missing {missing[:3]})")
        return net.eval()

    @property
    def labels(self) -> dict[int, str]:
        return self.plan.labels


def build_from_plan(plan: Plan, deep_supervision: bool | None = None) -> torch.nn.Module:
    from medseg.train.network import build_network

    sp = plan.target_spacing
    if plan.spatial_dims == 2:
        ax = max(range(3), key=lambda i: sp[i])
        sp = [s for i, s in enumerate(sp) if i != ax]
    return build_network(plan.spatial_dims, plan.in_channels, plan.num_classes, plan.patch_size, sp,
                         base_filters=plan.base_filters, max_filters=plan.max_filters,
                         deep_supervision=plan.deep_supervision if deep_supervision is None else deep_supervision,
                         residual=plan.residual)


def strip_ddp(state_dict: dict) -> dict:
    return {k[7:] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def save_model(path: str | os.PathLike, plan: Plan, state_dict: dict | list[dict], protect=(), **info) -> Path:
    """Write the artifact atomically; a list of state dicts makes an ensemble of that many networks.
    ``protect``: input files it must not replace."""
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
    """Load ``model.pt`` (or a run folder holding one) safely (``weights_only=True``)."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise InputError("no model here (expected a model.pt file or a run folder with one)", path=path)
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: the one-line error below says it all
            warnings.simplefilter("ignore")
            d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights only" in str(exc).lower():  # torch's text goes on to advise weights_only=False: never
            raise InputError("not a medseg model: the file holds Python objects other than tensors, which are "
                             "never unpickled", path=path) from None
        raise InputError(f"cannot load model ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})",
                         path=path) from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise InputError("not a medseg model file", path=path)
    plan = Plan.from_dict(d["plan"], where=path)
    members = d.get("members")
    if not (isinstance(members, list) and members and all(isinstance(m, dict) for m in members)):
        members = None
        if not isinstance(d.get("state_dict"), dict):
            raise InputError("model file holds no weights", path=path)
    info = {"versions": d.get("versions", {}), **d.get("info", {}), "path": str(path)}
    return ModelArtifact(plan, members[0] if members else d["state_dict"], info, members)
