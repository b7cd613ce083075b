"""The main job on the real sample data, as a list of steps (``medseg demo``).

Each step is a function ``step(ctx) -> None`` registered in ``STEPS`` with a title; later issues
append their own (train, predict, evaluate, export, cells). A step that needs a part of the
sample data that is absent says so and is skipped; the demo fails only on a real error.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from medseg.errors import InputError


@dataclass
class DemoContext:
    """What steps share: the data folder, the output folder, and a place to leave results."""

    data: Path
    out: Path
    results: dict = field(default_factory=dict)
    train_minutes: float = 3.0

    def say(self, text: str = "") -> None:
        print(text, flush=True)


SAMPLE_PARTS = ("dicom/mr_study", "msd_hippocampus", "dsb2018_fluo")

STEPS: list[tuple[str, Callable[[DemoContext], None]]] = []


def step(title: str):
    """Decorator: register a demo step (steps run in registration order)."""
    def register(fn):
        STEPS.append((title, fn))
        return fn
    return register


def find_data(data: str | os.PathLike | None = None) -> Path:
    """The sample data folder (``medseg.data.find_sample_data``: ``data``, else ``$MEDSEG_DATA``, else
    ``../shared/data``); ``InputError`` saying what to pass when there is none."""
    from medseg.data import find_sample_data

    found = find_sample_data(data)
    if found is not None:
        if not any((found / part).exists() for part in SAMPLE_PARTS):
            raise InputError(f"no sample data in this folder (expected one of {', '.join(SAMPLE_PARTS)}); "
                             "pass --data DIR pointing at the shared data folder", path=found)
        return found
    if data is not None:
        raise InputError("sample data folder not found", path=data)
    raise InputError("sample data not found (looked at $MEDSEG_DATA and ../shared/data); pass --data DIR "
                     "or set MEDSEG_DATA", path=Path.cwd().parent / "shared" / "data")


@step("DICOM study -> NIfTI: every series of dicom/mr_study, with its geometry")
def dicom_study(ctx: DemoContext) -> None:
    from medseg.io.convert import convert, format_summary, image_summary
    from medseg.io.dicom import discover_series, load_series

    study = ctx.data / "dicom" / "mr_study"
    if not study.is_dir():
        ctx.say(f"  skipped: {study} is missing")
        return
    t0 = time.perf_counter()
    found = discover_series(study)
    ctx.say(f"  {len(found)} series in {study} (headers read in {time.perf_counter() - t0:.2f} s)")
    for s in found:
        img = load_series(s)
        rec = {"index": s.index, "source": str(s.folder), **image_summary(img)}
        ctx.say("  " + format_summary(rec).replace("\n", "\n  "))
        ctx.say("      " + _check_against_simpleitk(img, s))
    out = ctx.out / "mr_study_nifti"
    written = convert(study, out)
    ctx.results["mr_study_nifti"] = written
    ctx.say(f"  wrote {len(written)} NIfTI files to {out}:")
    for p in written:
        ctx.say(f"    {p}")


def _check_against_simpleitk(img, info) -> str:
    """One line: does SimpleITK's ImageSeriesReader (GDCM) read the same geometry and voxels?"""
    try:
        import SimpleITK as sitk
    except ImportError:
        return "check: SimpleITK not installed"
    import numpy as np

    from medseg.io.image import Image

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(info.folder), info.series_uid))
    ref = Image.from_sitk(reader.Execute())
    same = ref.shape == img.shape and np.array_equal(ref.array, img.array)
    diff = float(np.abs(ref.affine - img.affine).max()) if ref.shape == img.shape else float("nan")
    return (f"check: SimpleITK reads {'the same' if same else 'DIFFERENT'} voxels, affine differs by "
            f"{diff:.1e} mm at most")


def run_demo(data: Path, out: Path, train_minutes: float = 3.0) -> DemoContext:
    """Run every registered step; returns the context with the steps' results."""
    from medseg.demo_steps import register_all

    if not 0 < train_minutes < float("inf"):  # else refused at training, after step 1 has written its files
        raise InputError(f"--train-minutes must be a finite number of minutes > 0, got {train_minutes}")
    register_all()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(Path(data), out, train_minutes=train_minutes)
    ctx.say(f"medseg demo: data {ctx.data}, outputs in {out.resolve()}")
    for i, (title, fn) in enumerate(STEPS, 1):
        ctx.say(f"\n[{i}/{len(STEPS)}] {title}")
        t0 = time.perf_counter()
        fn(ctx)
        ctx.say(f"  done in {time.perf_counter() - t0:.1f} s")
    ctx.say(f"\nAll outputs are in {out.resolve()}")
    return ctx
