"""Output folders kept out of the input folders they are made from (the contract: inputs are never modified)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from medseg.errors import InputError


def refuse_output_in_input(output: str | os.PathLike, root: str | os.PathLike, data_folders: Iterable[str] | None,
                           what: str = "the run folder (-o)", input_name: str = "the dataset folder") -> None:
    """``InputError`` naming ``output`` when it is the input folder ``root`` or lies inside one of its
    ``data_folders`` (the sub-folders its reader lists; None: anywhere inside ``root``, for a reader that walks
    it all): writing there would change the input.

    Links are followed and ``output`` need not exist yet. Another folder inside ``root`` (``DATASET/runs/fold0``) is
    allowed when ``data_folders`` are given: the dataset readers list only those, and not recursively, so what is
    written there does not change what they read.

    Examples
    --------
    >>> import tempfile
    >>> ds = Path(tempfile.mkdtemp())
    >>> refuse_output_in_input(ds / "runs" / "fold0", ds, ["imagesTr", "labelsTr"])  # allowed
    >>> refuse_output_in_input(ds / "imagesTr" / "run", ds, ["imagesTr", "labelsTr"])
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: .../imagesTr/run: the run folder (-o) is inside the dataset folder's imagesTr/ (...
    """
    out = Path(os.path.realpath(output))
    real = Path(os.path.realpath(root))
    if out == real:
        where = input_name
    elif data_folders is None:
        if not out.is_relative_to(real):
            return
        where = f"inside {input_name}"
    else:
        inside = [(f, d) for f in data_folders if out.is_relative_to(d := Path(os.path.realpath(real / f)))]
        if not inside:
            return
        folder, real_folder = inside[0]
        where = f"{'' if out == real_folder else 'inside '}{input_name}'s {folder}/"
    raise InputError(f"{what} is {where} ({root}): what it writes would change the input; choose a folder "
                     "outside it", path=output)


def refuse_run_in_data(run_dir: str | os.PathLike, cache_dir: str | os.PathLike | None, root: str | os.PathLike,
                       data_folders: Iterable[str]) -> None:
    """:func:`refuse_output_in_input` for a training run: its folder and its disk cache (None: none)."""
    for folder, what in ((run_dir, "the run folder (-o)"), (cache_dir, "the disk cache folder")):
        if folder is not None:
            refuse_output_in_input(folder, root, data_folders, what)
