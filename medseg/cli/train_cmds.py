"""CLI: `medseg dataset convert|check`, `medseg plan`, `medseg train`, `medseg predict` (issue 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app, dataset_app
from medseg.errors import InputError
from medseg.infer.devices import DEVICE_HELP, parse_device  # torch-free to import: the CLI starts fast


@dataset_app.command("convert")
def dataset_convert(
    source: Path = typer.Argument(..., help="BraTS-style folder: one sub-folder per patient."),
    output: Path = typer.Option(..., "-o", "--output", help="Dataset folder to write (MSD/nnU-Net layout)."),
    modalities: str = typer.Option("Flair,T1c", help="Comma-separated modality file prefixes, in channel order."),
    label: str = typer.Option("OTMultiClass", help="Label file name (without suffix)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the dataset in a non-empty output folder."),
) -> None:
    """Convert a per-patient folder layout (BraTS sample) into the MSD/nnU-Net layout."""
    from medseg.train.brats import convert_brats

    ds = convert_brats(source, output, tuple(m.strip() for m in modalities.split(",") if m.strip()), label,
                       overwrite=overwrite)
    typer.echo(f"wrote {len(ds.cases)} cases to {output}")


@dataset_app.command("check")
def dataset_check(dataset: Path = typer.Argument(..., help="MSD/nnU-Net dataset folder.")) -> None:
    """Integrity check: geometry of image and label agree, label values are in dataset.json (exit 2 if not)."""
    from medseg.train.dataset import open_dataset
    from medseg.train.dataset_check import check_dataset

    ds = open_dataset(dataset)
    problems = check_dataset(ds, progress=True)
    if problems:
        for p in problems[1:]:
            typer.echo(p)
        raise InputError(f"{len(problems)} problem(s); first: {problems[0]}", path=dataset)
    typer.echo(f"{dataset}: {len(ds.cases)} cases OK")


@app.command("plan")
def plan_cmd(
    dataset: Path = typer.Argument(..., help="MSD/nnU-Net dataset folder."),
    output: Path = typer.Option(..., "-o", "--output", help="plan.yaml to write."),
    device: str = typer.Option("cpu", help=f"Target device for training: {DEVICE_HELP} (the GPU may be on "
                                           "another machine)."),
    memory_gb: Optional[float] = typer.Option(None, help="Memory budget of the device (GB)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Training time budget to plan for."),
) -> None:
    """Fingerprint a dataset and write an editable training plan (YAML)."""
    from medseg.plan.planner import make_plan

    plan = make_plan(dataset, device=device, memory_gb=memory_gb, minutes=max_minutes, progress=True, output=output)
    typer.echo(f"wrote {output}: {plan.spatial_dims}D, patch {plan.patch_size}, batch {plan.batch_size}, "
               f"spacing {plan.target_spacing}, {len(plan.strides) - 1} down-samplings")


@app.command("train")
def train_cmd(
    source: Path = typer.Argument(..., help="Dataset folder, or a plan/config YAML."),
    output: Path = typer.Option(..., "-o", "--output", help="Run folder."),
    fold: Optional[int] = typer.Option(None, help="Fold of the k-fold split to validate on."),
    max_epochs: Optional[int] = typer.Option(None, "--max-epochs", help="Stop after this many epochs (default: the "
                                                                         "plan's max_epochs)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes",
                                                help="Time budget; ends cleanly. From a dataset folder the plan is "
                                                     "also fitted to it, as `medseg plan --max-minutes` does."),
    resume: bool = typer.Option(False, "--resume", help="Continue from checkpoint_latest.pt in the run folder."),
    device: str = typer.Option("auto", help=f"{DEVICE_HELP} (auto: CUDA when available, else the CPU)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
    ensemble: Optional[int] = typer.Option(None, "--ensemble", min=1,
                                           help="Train this many networks (seeds seed, seed+1, ...) one after "
                                                "another within the budget and average them (default: the plan's)."),
    tensorboard: bool = typer.Option(False, "--tensorboard",
                                     help="Also log loss, learning rate and validation Dice to RUN/tensorboard "
                                          "(needs the tensorboard package)."),
    cache: Optional[str] = typer.Option(None, "--cache",
                                        help="Preprocessed cases: memory, disk (memory-mapped; datasets larger "
                                             "than RAM) or auto (disk once they would fill 40 % of the free RAM). "
                                             "Default: the plan's (auto)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir",
                                             help="Folder of the disk cache; give runs and folds of one plan the "
                                                  "same folder to preprocess once (default: RUN/cache)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a model; writes checkpoints, log.csv, splits.json and the model artifact model.pt to the run folder
    (an ensemble: one sub-folder per member and model.pt holding all of them).

    Example: medseg train ../shared/data/msd_hippocampus -o runs/hippo --max-minutes 30"""
    from medseg.train.ensemble import train_ensemble
    from medseg.train.trainer import train

    # parsed once, here: a typo or a missing GPU fails before minutes of fingerprinting, and what goes on is the
    # canonical spelling (`CPU` reached ddp.setup as "CPU", which is not "cpu", and picked NCCL under torchrun)
    device = str(parse_device(device))
    if resume and not source.exists():
        raise InputError("no such file or folder", path=source)
    from medseg.plan.planner import load_plan

    plan = load_plan(source, device, max_minutes, progress=True) if not resume else _resume_plan(source, output, fold)
    if resume and ensemble is not None and ensemble != plan.ensemble:  # it picks train or train_ensemble below
        raise InputError(f"--ensemble {ensemble}: the run being resumed has ensemble {plan.ensemble}", path=output)
    from medseg.plan.plan import CACHE_MODES

    if cache is not None and cache not in CACHE_MODES:
        raise InputError(f"--cache {cache}: expected one of {', '.join(CACHE_MODES)}")
    if cache is not None:
        plan.cache = cache
    if cache_dir is not None:
        plan.cache_dir = str(cache_dir.resolve())
    plan_file = source if source.is_file() else None  # never rewritten by a new run (RUN/plan.yaml may be it)
    if (ensemble or plan.ensemble) > 1:
        res = train_ensemble(plan, output, members=ensemble, fold=fold, max_epochs=max_epochs,
                             max_minutes=max_minutes, resume=resume, device=device, progress=not quiet,
                             num_threads=threads, tensorboard=tensorboard, cache_mode=cache, cache_dir=cache_dir,
                             plan_file=plan_file)
    else:
        res = train(plan, output, fold=fold, max_epochs=max_epochs, max_minutes=max_minutes, resume=resume,
                    device=device, progress=not quiet, num_threads=threads, tensorboard=tensorboard,
                    cache_mode=cache, cache_dir=cache_dir, plan_file=plan_file)
    dice = ", ".join(f"{k} {v:.4f}" for k, v in res.val_dice.items())
    what = f"an ensemble of {ensemble or plan.ensemble} networks, " if (ensemble or plan.ensemble) > 1 else ""
    from medseg.train.store import cache_folder

    cached = cache_folder(plan, output)
    where = f"; preprocessed cases on disk: {cached} (reused by runs of this plan; delete when done)" \
        if cached and cached.is_dir() else ""
    typer.echo(f"trained {what}{res.epochs} epochs ({res.iterations} iterations, {res.elapsed_s / 60:.1f} min); "
               f"validation Dice: {dice or 'n/a'}; model: {res.model_path}{where}")


def _resume_plan(source: Path, run_dir: Path, fold: int | None):
    """The run's own plan; SOURCE may move its dataset, and a plan file given as SOURCE must agree with it (else a
    resume would silently train the run's plan, not the file's)."""
    from medseg.plan.plan import Plan
    from medseg.train.checkpoint import asked_plan, check_resume

    if not (run_dir / "plan.yaml").is_file():
        raise InputError("--resume: the run folder has no plan.yaml", path=run_dir)
    plan = Plan.from_yaml(run_dir / "plan.yaml")
    if source.is_file():
        given, dataset = asked_plan(str(source), fold, plan)
        check_resume(plan, given, run_dir / "plan.yaml")
        plan.dataset = dataset or plan.dataset
    elif source.is_dir() and (source / "dataset.json").is_file():
        plan.dataset = str(source.resolve())
    return plan


@app.command("ensemble")
def ensemble_cmd(
    models: list[Path] = typer.Argument(..., help="Two or more model.pt files or run folders of one plan."),
    output: Path = typer.Option(..., "-o", "--output", help="model.pt (or a folder) to write."),
) -> None:
    """Join separately trained models (folds, seeds, machines) into one model that averages their probabilities."""
    from medseg.train.ensemble import combine_models

    path = combine_models(models, output)
    typer.echo(f"wrote {path}: {len(models)} models joined")


@app.command("predict")
def predict_cmd(
    model: Path = typer.Option(..., "-m", "--model", help="model.pt or the run folder."),
    input: Path = typer.Option(..., "-i", "--input", help="Image file, folder of images, or DICOM series folder."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder (one label map per case)."),
    overlap: Optional[float] = typer.Option(None, help="Sliding-window overlap (default: the plan's)."),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta",
                                       help="Mirroring TTA over the axes the model was trained to mirror "
                                            "(default: the plan's `tta`)."),
    device: str = typer.Option("auto", help=f"{DEVICE_HELP} (auto: CUDA when available, else the CPU)."),
    shard: Optional[str] = typer.Option(None, help="i/n: predict only every n-th case starting at i (0-based)."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write <case>_probs.nii.gz."),
    largest_component: bool = typer.Option(
        False, "--largest-component",
        help="Keep the largest component per class (26-connected; written probabilities are not changed)."),
    min_size: float = typer.Option(
        0.0, "--min-size",
        help="Remove components smaller than this (mm³, 26-connected; one of exactly this size is kept)."),
    export: Optional[str] = typer.Option(None, "--export", help="dicom-seg or rtstruct (DICOM input only; a case "
                                                                 "predicted without foreground gets none, with a note)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Re-predict cases whose output exists."),
    series: Optional[str] = typer.Option(None, "--series", help="DICOM series index or UID; default: all series."),
    keep_going: bool = typer.Option(False, "--keep-going",
                                    help="A case whose data turn out bad is reported and skipped, the others "
                                         "predicted (exit 2 at the end); default: stop at it."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Predict label maps in the inputs' own geometry (same shape and affine)."""
    from medseg.infer.cohort import predict_path

    # before the model is loaded: `--device gpu` is a usage error (exit 2), not a crash
    device = str(parse_device(device))
    written, skipped = predict_path(model, input, output, overlap=overlap, tta=tta, device=device,
                                    shard=shard, probabilities=probabilities,
                                    largest_component=largest_component, min_size_mm3=min_size, export=export,
                                    overwrite=overwrite, progress=not quiet, series=series, keep_going=keep_going)
    typer.echo(f"wrote {len(written)} prediction(s) to {output}" + (f", skipped {skipped} finished" if skipped else ""))
