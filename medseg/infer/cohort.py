"""Predicting a file, a folder of cases or a DICOM series: skip finished outputs, shard a cohort, write atomically."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import case_name, full_suffix
from medseg.io.image import Image
from medseg.io.readers import read_image, write_image

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
_CH = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` → ``(i, n)`` with 0 <= i < n.

    Examples
    --------
    >>> parse_shard("1/4")
    (1, 4)
    """
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise InputError(f"--shard must be i/n with 0 <= i < n, got '{text}'")
    return int(m.group(1)), int(m.group(2))


def list_cases(path: Path, channels: int = 1) -> list[tuple[str, list[Path]]]:
    """(case id, input paths) for a file, a folder of image files (``case_0000`` channel files grouped) or a
    DICOM series folder (one case named after the folder)."""
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    if path.is_file():
        return [(case_name(path), [path])]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and full_suffix(p) in IMAGE_SUFFIXES)
    if not files:
        return [(path.name, [path])]  # a DICOM series folder
    groups: dict[str, list[Path]] = {}
    for p in files:
        m = _CH.match(case_name(p))
        key = m.group("case") if (m and channels > 1) or (m and m.group("ch") == "0000" and channels == 1) else case_name(p)
        groups.setdefault(key, []).append(p)
    return sorted(groups.items())


def read_case(paths: list[Path]) -> Image:
    """One case as an ``Image`` (channels first when several files or a 4D file)."""
    images = [read_image(p) for p in paths]
    if len(images) == 1:
        return images[0]
    ref = images[0]
    for p, im in zip(paths[1:], images[1:]):
        if not ref.same_grid(im):
            raise InputError(f"channel file is not on the grid of {paths[0].name}", path=p)
    arr = np.stack([np.asarray(im.array, np.float32) for im in images])
    return Image(arr, ref.affine, {**ref.meta, "source": str(paths[0])}, True)


def predict_path(model, input: str | os.PathLike, output: str | os.PathLike, overlap=None, tta=None,
                 device="auto", shard=None, probabilities=False, largest_component=False, min_size_mm3=0.0,
                 export: str | None = None, overwrite=False, progress=False, batch_size: int = 2):
    """Predict every case under ``input`` into ``output``; returns (written paths, number skipped).

    ``overlap`` and ``tta`` default to the plan's; ``tta=True`` mirrors over the plan's flip axes only.
    """
    import torch

    from medseg.infer.predict import predict_image
    from medseg.train.artifact import load_model
    from medseg.train.trainer import resolve_device

    input, output = Path(input), Path(output)
    if export not in (None, "dicom-seg", "rtstruct"):
        raise InputError(f"--export must be dicom-seg or rtstruct, got '{export}'")
    art = load_model(model)
    dev = resolve_device(device)
    cases = list_cases(input, art.plan.in_channels)
    if shard:
        cases = cases[shard[0]::shard[1]]
    if export and not all(p.is_dir() for _, paths in cases for p in paths):
        raise InputError(f"--export {export} needs a DICOM series folder as input", path=input)
    output.mkdir(parents=True, exist_ok=True)
    net = art.build().to(dev)
    written, skipped = [], 0
    todo = []
    for cid, paths in cases:
        dest = output / f"{cid}.nii.gz"
        if dest.exists() and not overwrite:
            skipped += 1
            continue
        todo.append((cid, paths, dest))
    it = todo
    if progress and len(todo) > 1:
        from tqdm import tqdm

        it = tqdm(todo, desc="predicting", leave=False)
    for cid, paths, dest in it:
        image = read_case(paths)  # raises InputError naming the file before anything of this case is written
        with torch.no_grad():
            lab, prob = predict_image(net, art.plan, image, overlap=overlap, tta=tta, device=dev,
                                      batch_size=batch_size, probabilities=probabilities,
                                      largest_component=largest_component, min_size_mm3=min_size_mm3)
        if export:
            _export(lab, paths[0], export, output / f"{cid}_{export.replace('-', '')}.dcm", art.plan.labels)
        if prob is not None:
            write_image(prob, output / f"{cid}_probs.nii.gz", protect=paths)
        write_image(lab, dest, protect=paths)  # last: its presence marks the case finished
        written.append(dest)
    return written, skipped


def _export(label: Image, reference: Path, fmt: str, out: Path, labels: dict) -> None:
    try:
        from medseg.export import export_segmentation
    except ImportError as exc:
        raise InputError(f"--export {fmt}: DICOM export is not available in this installation") from exc
    export_segmentation(label, reference, fmt, out, labels={k: v for k, v in labels.items() if k})
