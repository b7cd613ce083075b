"""Sample data: finding it on disk, and fetching the public datasets when a user asks for it.

Nothing in medseg downloads implicitly: ``fetch`` runs only from ``medseg data fetch NAME``.
Archives are checked (size, checksum where the source publishes one) and unpacked safely
(no absolute paths, no ``..``, no links) into a temporary folder that is renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medseg.errors import InputError


@dataclass(frozen=True)
class Source:
    """A public dataset: where it comes from and how to check it."""

    name: str
    url: str
    md5: str | None  # None: the source publishes no checksum; we print the one we computed
    archive_root: str  # the folder the archive unpacks to
    licence: str
    description: str


SOURCES: dict[str, Source] = {
    "msd-hippocampus": Source(
        "msd-hippocampus", "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task04_Hippocampus.tar",
        "9d24dba78a72977dbd1d2e110310f31b", "Task04_Hippocampus", "CC-BY-SA 4.0",
        "Medical Segmentation Decathlon Task04 (MR hippocampus, 260 training cases), MSD layout"),
    "dsb2018": Source(
        "dsb2018", "https://data.broadinstitute.org/bbbc/BBBC038/stage1_train.zip", None, "stage1_train", "CC0",
        "Data Science Bowl 2018 stage-1 training set (BBBC038): nuclei, one PNG mask per nucleus; converted to "
        "images/<id>.png + labels/<id>.tif"),
}


def find_sample_data(explicit: str | os.PathLike | None = None) -> Path | None:
    """The sample data folder: ``explicit``, else ``$MEDSEG_DATA``, else ``../shared/data`` next to the
    working directory or to the repository; ``None`` when none exists.

    Examples
    --------
    >>> find_sample_data("/nonexistent") is None
    True
    """
    if explicit is not None:
        p = Path(explicit).expanduser()
        return p.resolve() if p.is_dir() else None
    candidates = []
    if os.environ.get("MEDSEG_DATA"):
        env = Path(os.environ["MEDSEG_DATA"]).expanduser()
        if env.is_dir():
            candidates.append(env)
        else:  # a typo in the variable must not pass unnoticed while another folder is used
            warnings.warn(f"MEDSEG_DATA={os.environ['MEDSEG_DATA']} is not a folder; ignored", stacklevel=2)
    repo = Path(__file__).resolve().parents[1]
    candidates += [Path.cwd().parent / "shared" / "data", repo.parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


def file_digest(path: str | os.PathLike, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe_members(names: list[str], archive: Path) -> None:
    for n in names:
        p = Path(n)
        if p.is_absolute() or ".." in p.parts:
            raise InputError(f"archive member '{n}' points outside the target folder; refusing to unpack", path=archive)


def unpack_archive(archive: str | os.PathLike, dest: str | os.PathLike, expected_md5: str | None = None) -> Path:
    """Verify ``archive`` (md5 when given) and unpack it into ``dest`` atomically; returns ``dest``.

    Raises ``InputError`` for a checksum mismatch, a corrupt archive, unsafe members, or an existing ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise InputError("already exists; remove it first or choose another folder", path=dest)
    if expected_md5 is not None:
        got = file_digest(archive, "md5")
        if got != expected_md5:
            raise InputError(f"checksum mismatch (md5 {got}, expected {expected_md5}): corrupt or changed download",
                             path=archive)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _safe_members(zf.namelist(), archive)
                bad = zf.testzip()
                if bad is not None:
                    raise InputError(f"corrupt archive member '{bad}'", path=archive)
                zf.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                _safe_members([m.name for m in members], archive)
                if any(m.issym() or m.islnk() or m.isdev() for m in members):
                    raise InputError("archive contains links or device files; refusing to unpack", path=archive)
                tf.extractall(tmp, filter="data")
        else:
            raise InputError("not a zip or tar archive (truncated download?)", path=archive)
        os.replace(tmp, dest)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"cannot unpack archive ({exc})", path=archive) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def dsb_to_instance_layout(stage1_dir: str | os.PathLike, out_dir: str | os.PathLike,
                           fluorescence_only: bool = True) -> int:
    """Convert DSB2018's ``<id>/images/<id>.png`` + ``<id>/masks/*.png`` into ``images/<id>.png`` and
    ``labels/<id>.tif`` (uint16 instance map). Returns the number of images written.

    ``fluorescence_only`` keeps grayscale, dark-background images (the subset medseg's cell tests use).
    """
    import imageio.v3 as iio
    import tifffile

    stage1_dir, out_dir = Path(stage1_dir), Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    n = 0
    for case in sorted(p for p in stage1_dir.iterdir() if p.is_dir()):
        img_file = case / "images" / f"{case.name}.png"
        if not img_file.exists():
            continue
        img = np.asarray(iio.imread(img_file))
        rgb = img[..., :3] if img.ndim == 3 else img[..., None]
        if fluorescence_only and (np.ptp(rgb.astype(int), axis=-1).max() > 0 or rgb.mean() > 127):
            continue
        labels = np.zeros(img.shape[:2], np.uint16)
        for k, m in enumerate(sorted((case / "masks").glob("*.png")), start=1):
            labels[np.asarray(iio.imread(m)) > 0] = k
        shutil.copyfile(img_file, out_dir / "images" / img_file.name)
        tifffile.imwrite(out_dir / "labels" / f"{case.name}.tif", labels)
        n += 1
    return n


def download(url: str, dest: Path, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (temp file + rename). The only network access in medseg, and only when a user
    asks for it (``medseg data fetch``): offline, or cut short, it is a one-line ``InputError`` and no file."""
    import http.client
    import urllib.request

    from medseg.io.atomic import atomic_path

    def failed(exc: Exception | str) -> InputError:  # no network, refused, timed out, or cut short
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return InputError(f"download failed ({reason}); medseg needs no network except for this explicit fetch",
                          path=url)

    try:
        response = urllib.request.urlopen(url, timeout=60)  # noqa: S310 (user-requested)
    except (OSError, http.client.HTTPException) as exc:
        raise failed(exc) from exc
    # atomic_path: a unique, locked temporary file, removed when the download fails or is killed; a failed write
    # (a full disk) is its "cannot write output", a failed read the download's
    with response, atomic_path(dest) as tmp, open(tmp, "wb") as f:
        total = int(response.headers.get("Content-Length") or 0)
        done = 0
        while True:
            try:
                chunk = response.read(1 << 20)
            except (OSError, http.client.HTTPException) as exc:
                raise failed(exc) from exc
            if not chunk:  # read(amt) ends quietly where the server stopped: a dropped connection too
                if total and done != total:
                    raise failed(f"cut short: {done} of {total} bytes")
                break
            f.write(chunk)
            done += len(chunk)
            if progress and total:
                print(f"\r{dest.name}: {done / 1e6:.0f}/{total / 1e6:.0f} MB", end="", flush=True)
    if progress and total:
        print()
    return dest


def fetch(name: str, out_dir: str | os.PathLike, downloader: Callable[[str, Path], Path] | None = None) -> Path:
    """Download, verify and unpack the public dataset ``name`` (see ``SOURCES``) under ``out_dir``."""
    if name not in SOURCES:
        raise InputError(f"unknown dataset '{name}' (known: {', '.join(SOURCES)})")
    src = SOURCES[name]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / name
    if final.exists():
        raise InputError("already exists; remove it first to fetch again", path=final)
    archive = out_dir / Path(src.url).name
    if not archive.exists():
        (downloader or download)(src.url, archive)
    if src.md5 is None:
        print(f"{archive.name}: the source publishes no checksum; sha256 {file_digest(archive, 'sha256')}")
    unpacked = unpack_archive(archive, out_dir / f".{name}.unpacked", expected_md5=src.md5)
    try:
        root = unpacked / src.archive_root
        if not root.is_dir():
            raise InputError(f"archive does not contain '{src.archive_root}/'", path=archive)
        if name == "dsb2018":
            tmp = out_dir / f".{name}.converted"
            dsb_to_instance_layout(root, tmp)
            os.replace(tmp, final)
        else:
            os.replace(root, final)
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)
    return final
