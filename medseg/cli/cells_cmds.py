"""CLI: `medseg cells train|count|evaluate` (issue 5): thin wrappers over ``medseg.cells``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import cells_app
from medseg.errors import InputError


def _scale_range(text: Optional[str]):
    """``LO,HI`` (zoom factors, 0 < LO <= HI), or ``off`` (None)."""
    if text.strip().lower() == "off":
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--scale-range must be two numbers LO,HI like 0.75,1.33, or off (got '{text}')") from None
    if not 0 < lo <= hi < float("inf"):
        raise InputError(f"--scale-range needs 0 < LO <= HI (got '{text}')")
    return lo, hi


@cells_app.command("train")
def train_cmd(
    data: Path = typer.Argument(..., help="Dataset folder: images/<id>.<ext> and labels/<id>.tif."),
    out: Path = typer.Option(..., "-o", "--out", help="Run folder (model.json, model.pt, checkpoint.pt, log.csv)."),
    config: Optional[Path] = typer.Option(None, "--config",
                                          help="YAML file of training settings (every CellTrainConfig field, e.g. "
                                               "configs/cells_dsb2018.yaml); the options below override it."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes",
                                                help="Training time budget (wall clock; default 20)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many steps."),
    patch: Optional[int] = typer.Option(None, "--patch", help="Training crop size, pixels per axis (default 256 in "
                                                             "2D; 3D: fitted to the stacks)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Crops per step (default 2)."),
    channel: Optional[int] = typer.Option(None, "--channel", min=0, help="Channel of multi-channel images (0-based)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (crops, augmentation, weights; default 0)."),
    resume: bool = typer.Option(False, "--resume",
                                help="Continue from RUN/checkpoint.pt with the run's own settings (--max-minutes, "
                                     "--max-steps, --threads, --cache, --cache-dir, --tune-objective and "
                                     "--tune-selection may change)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: "
                                         "OMP_NUM_THREADS if set, else the cores not already busy)."),
    tune_fraction: Optional[float] = typer.Option(None, "--tune-fraction",
                                                  help="Share of the training images held out to choose the "
                                                       "watershed thresholds (default 0.1; 0: keep the 0.5 "
                                                       "defaults)."),
    tune_objective: Optional[str] = typer.Option(None, "--tune-objective",
                                                 help="What the threshold search maximises on those images: ap "
                                                      "(AP@0.5; default) or ap-count (AP@0.5 minus the mean "
                                                      "absolute count error)."),
    tune_selection: Optional[str] = typer.Option(None, "--tune-selection",
                                                 help="How the best thresholds are picked: peak (the best mean; "
                                                      "default) or plateau (the best mean over each setting's grid "
                                                      "neighbours)."),
    distance_head: Optional[bool] = typer.Option(None, "--distance-head/--no-distance-head",
                                                 help="Also predict each nucleus's distance map (watershed markers "
                                                      "from its cores; the threshold search picks these or "
                                                      "interior-minus-boundary). Default: on."),
    diameter: Optional[float] = typer.Option(None, "--diameter",
                                             help="Enlarge training images to this median nucleus diameter (px); "
                                                  "counting then resizes each image alike (default: native scale)."),
    contact_weight: Optional[float] = typer.Option(None, "--contact-weight",
                                                   help="Extra cross-entropy weight (w0 of the U-Net paper's weight "
                                                        "map) where nuclei touch; 0: off (default 10, the "
                                                        "paper's)."),
    offset_head: Optional[bool] = typer.Option(None, "--offset-head/--no-offset-head",
                                               help="Also predict each pixel's offset to its nucleus's centre "
                                                    "(markers by following them to the centres join the threshold "
                                                    "search). Default: on."),
    scale_range: Optional[str] = typer.Option(None, "--scale-range", metavar="LO,HI",
                                              help="Zoom augmentation: half the training crops resized by a random "
                                                   "factor in [LO, HI], e.g. 0.75,1.33; 'off' disables it."),
    fold: Optional[int] = typer.Option(None, "--fold",
                                       help="Validate on this fold (0-based) of a k-fold split by the image ids' "
                                            "hash instead of the default 15 % split (cross-validation)."),
    folds: Optional[int] = typer.Option(None, "--folds", help="Number of folds for --fold (default 5)."),
    cache: Optional[str] = typer.Option(None, "--cache",
                                        help="Where the prepared training images live: memory, disk (memory-mapped "
                                             "from --cache-dir: datasets larger than RAM) or auto (RAM while they "
                                             "fit in 40 % of it; default)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir",
                                             help="Folder of the disk cache; runs and folds given the same folder "
                                                  "prepare each image once (default: RUN/cache)."),
    tensorboard: bool = typer.Option(False, "--tensorboard",
                                     help="Also log loss and learning rate to RUN/tensorboard (needs the "
                                          "tensorboard package)."),
) -> None:
    """Train a cell model (interior/boundary U-Net) within a time budget: 2D, or 3D for TIFF stacks (without
    --config the crop is fitted to the stacks; with it, spatial_dims: 3 and a three-entry patch_size)."""
    from medseg.cells.config import CellTrainConfig, config_for_data
    from medseg.cells.saved_config import RESUMABLE, resumed_config
    from medseg.cells.train import train_cells

    given = {"max_minutes": max_minutes, "max_steps": max_steps, "batch_size": batch_size, "channel": channel,
             "seed": seed, "threads": threads, "tune_fraction": tune_fraction, "tune_objective": tune_objective,
             "tune_selection": tune_selection, "distance_head": distance_head, "diameter": diameter,
             "contact_weight": contact_weight,
             "offset_head": offset_head, "patch_size": None if patch is None else (patch,), "fold": fold,
             "folds": folds, "cache": cache, "cache_dir": None if cache_dir is None else str(cache_dir.resolve())}
    options = set(given)
    given = {k: v for k, v in given.items() if v is not None}
    if scale_range is not None:  # "off" is None: given, not unchanged
        given["scale_range"] = _scale_range(scale_range)
    if resume:
        if config is not None:
            raise InputError("--resume continues with the run's own settings; leave out --config")
        fixed = sorted(set(given) - set(RESUMABLE))
        if fixed:
            *rest, last = [_option(k) for k in RESUMABLE if k in options]
            raise InputError(f"--resume continues with the run's own settings; only {', '.join(rest)} and {last} "
                             f"may change (got {', '.join(map(_option, fixed))})")
        if not (out / "checkpoint.pt").exists():
            raise InputError("nothing to resume: no checkpoint.pt", path=out)
        base = resumed_config(out)
    else:
        base = CellTrainConfig.from_yaml(config) if config is not None else \
            config_for_data(data, tune_fraction=tune_fraction)
    if "patch_size" in given:  # one size for every axis of the run's images
        given["patch_size"] = given["patch_size"] * base.spatial_dims
    cfg = _with_options(base, given)
    run = train_cells(data, out, cfg, resume=resume, tensorboard=tensorboard)
    from medseg.train.store import cache_folder

    cached = cache_folder(cfg, out)
    where = f"; prepared training images on disk: {cached} (reused by runs with the same target settings; delete " \
        "when done)" if cached and cached.is_dir() else ""
    typer.echo(f"model written to {run}{where}")


def _with_options(cfg, given: dict):
    """``cfg`` with the command-line options applied, validated; an impossible value names its option."""
    import dataclasses

    try:  # not cfg.updated(): "--scale-range off" sets None
        return dataclasses.replace(cfg, **given).validate()
    except InputError as exc:
        for k in given:  # "invalid cell training config: max_minutes must be ..." -> "--max-minutes must be ..."
            if exc.problem.startswith(f"invalid cell training config: {k} "):
                raise InputError(exc.problem.replace(f"invalid cell training config: {k}", _option(k), 1))
        raise


def _option(field: str) -> str:
    """The command-line option of a CellTrainConfig field."""
    return "--patch" if field == "patch_size" else "--" + field.replace("_", "-")


@cells_app.command("count")
def count_cmd(
    input: Path = typer.Option(..., "-i", "--input", help="An image (.tif/.tiff/.png) or a folder of images."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder."),
    model: Optional[Path] = typer.Option(None, "-m", "--model",
                                         help="Trained run (medseg cells train): its folder, model.json or model.pt."),
    classical: bool = typer.Option(False, "--classical", help="Threshold + distance watershed, no model."),
    method: Optional[str] = typer.Option(None, "--threshold",
                                         help="Classical mode threshold: otsu (default) or local."),
    channel: Optional[int] = typer.Option(None, "--channel", min=0, help="Channel of multi-channel images (0-based)."),
    pixel_size: Optional[str] = typer.Option(None, "--pixel-size",
                                             help="Pixel size in µm, overriding the file's: 'XY', 'Y,X' or 'Z,Y,X' "
                                                  "(a stack whose file has no z step needs 'Z,Y,X')."),
    exclude_border: bool = typer.Option(False, "--exclude-border", help="Drop cells touching the image border."),
    roi_zip: bool = typer.Option(False, "--roi-zip",
                                 help="Also write <id>_rois.zip (ImageJ ROIs) of the 2D images."),
    tta: bool = typer.Option(False, "--tta",
                             help="Average the model over flips (4x slower, usually better; model only)."),
    diameter: Optional[float] = typer.Option(None, "--diameter",
                                             help="Typical nucleus diameter in pixels, if known: sizes the "
                                                  "classical markers, and skips a model's per-image estimate."),
    rescale: bool = typer.Option(True, "--rescale/--no-rescale",
                                 help="Resize images whose nuclei are larger or smaller than any the model was "
                                      "trained on into its range (model only; default on)."),
    min_snr: Optional[float] = typer.Option(None, "--min-snr",
                                            help="Drop objects less than this many background-noise sigmas "
                                                 "brighter than the background (default: the model's, 2; "
                                                 "--classical 3; 0: keep all)."),
    merge_boundary: Optional[float] = typer.Option(None, "--merge-boundary",
                                                   help="Merge a small fragment into its neighbour across a border "
                                                        "whose mean boundary probability is below this (model "
                                                        "only; default: the model's, 0.35; 0: off)."),
    threads: Optional[int] = typer.Option(None, "--threads",
                                          help="CPU threads for torch (model only; default: OMP_NUM_THREADS "
                                               "if set, else the cores not already busy)."),
) -> None:
    """Segment and count cells: <id>_labels.tif, <id>_overlay.png, <id>_cells.csv per image; counts.csv.
    Every image is checked before anything is written; options the mode cannot use are refused."""
    from medseg.cells.count import count_cells

    rows = count_cells(input, out, model=model, classical=classical, channel=channel,
                       pixel_size=pixel_size, method=method, exclude_border=exclude_border,
                       roi_zip=roi_zip, tta=tta, diameter=diameter, min_snr=min_snr,
                       threads=threads, rescale=rescale, merge_boundary=merge_boundary,
                       note=lambda msg: typer.echo(f"medseg: note: {msg}", err=True))
    total = sum(r["count"] for r in rows)
    typer.echo(f"{total} cells in {len(rows)} image(s); results in {out}")


@cells_app.command("evaluate")
def evaluate_cmd(
    pred: Path = typer.Option(..., "--pred", help="Predicted label map, or a folder (<id>_labels.tif or <id>.tif)."),
    ref: Path = typer.Option(..., "--ref", help="Reference label map, or a folder (or a dataset with labels/)."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder for metrics.json and metrics.csv."),
) -> None:
    """Instance metrics (AP, precision, recall, F1, PQ at IoU 0.5..0.9) and count errors: metrics.json and
    metrics.csv in the output folder (required, as for medseg evaluate), a summary on stdout."""
    from medseg.cells.evaluate import evaluate_cells

    res = evaluate_cells(pred, ref, out)
    m, p = res["mean"], res["pooled"]
    # each score named as the mean over images or pooled over all cells (StarDist's default): a bare "AP@0.5" (the
    # mean) reads as the dataset's AP, which it overstates where images with few nuclei score well
    typer.echo(f"{res['n_images']} image(s), mean over images (pooled over all cells): "
               f"AP@0.5 {m['ap@0.5']:.3f} ({p['ap@0.5']:.3f}), F1@0.5 {m['f1@0.5']:.3f} ({p['f1@0.5']:.3f}), "
               f"|count error| {m['abs_relative_count_error']:.1%} ({p['abs_relative_count_error']:.1%})")
