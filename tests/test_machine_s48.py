"""Machine and environment dependence (session 48): the commands behave the same where HOME cannot be written
(``docker run --user "$(id -u):$(id -g)"`` gives HOME=/), where no temporary folder can be written (a read-only
container), and on a machine whose process may use fewer cores than the host has (``taskset``, a cpuset)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CliResult, data_path


def _medseg(*args: str, timeout: float = 300) -> CliResult:
    """``python -m medseg ARGS`` as a process, with the medseg under test (the old copy when comparing) and this
    process's environment."""
    import medseg

    env = {**os.environ, "PYTHONPATH": str(Path(medseg.__file__).resolve().parents[1])}
    p = subprocess.run([sys.executable, "-m", "medseg", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    return CliResult(p.returncode, p.stdout, p.stderr)


def _unwritable_home(tmp_path, monkeypatch) -> None:
    """HOME under a regular file: nothing can be made there, not even by root (for whom a read-only folder is
    writable); no config or cache folder set elsewhere. For the processes this test starts."""
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("HOME", str(tmp_path / "file" / "home"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for var in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)


def test_evaluate_with_unwritable_home_keeps_stderr_clean(tmp_path, monkeypatch):
    """``medseg evaluate`` draws its Dice plot with matplotlib, whose import, where HOME cannot be written, logged
    two lines on stderr (mkdir failed; a temporary cache folder made instead): the report is written and stderr
    stays empty, as with a writable HOME."""
    src = data_path("msd_hippocampus", "labelsTr")
    for side in ("pred", "ref"):
        (tmp_path / side).mkdir()
        for name in ("hippocampus_001.nii.gz", "hippocampus_004.nii.gz"):
            (tmp_path / side / name).symlink_to(src / name)
    _unwritable_home(tmp_path, monkeypatch)
    res = _medseg("evaluate", "-p", tmp_path / "pred", "-r", tmp_path / "ref", "-o", tmp_path / "out", "-q")
    assert res.code == 0, res.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.csv", "metrics.json", "report.html",
                                                                     "report.md"]
    assert res.err == ""


def _no_temporary_folder(monkeypatch) -> None:
    """Python's answer where TMPDIR, /tmp, /var/tmp, /usr/tmp and the working folder are all read-only
    (``docker run --read-only`` without a tmpfs): no temporary file can be made."""
    import tempfile

    def refuse(*args, **kwargs):
        raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp', '/var/tmp', '/usr/tmp']")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)


def test_mha_and_nrrd_read_without_a_temporary_folder(tmp_path, monkeypatch):
    """Reading MHA/NRRD (ITK) captured ITK's stderr in a temporary file: without a writable temporary folder a good
    file was refused ("cannot read image (No usable temporary directory found ...)"), NIfTI read fine. It reads,
    with nibabel's values; a cut-short MHA still gets its one-line reason."""
    import nibabel as nib

    from medseg.errors import InputError
    from medseg.io import read_image
    from medseg.io.convert import convert

    src = data_path("totalseg_example", "example_ct_sm.nii.gz")
    for suffix in (".mha", ".nrrd"):
        convert(src, tmp_path / f"ct{suffix}")
    whole = (tmp_path / "ct.mha").read_bytes()
    (tmp_path / "short.mha").write_bytes(whole[: len(whole) // 2])
    want = np.asanyarray(nib.load(src).dataobj)
    _no_temporary_folder(monkeypatch)
    for suffix in (".mha", ".nrrd"):
        img = read_image(tmp_path / f"ct{suffix}")
        assert img.array.shape == want.shape and np.array_equal(img.array, want), suffix
    with pytest.raises(InputError, match="truncated: the pixel data holds"):  # ITK's words, captured in memory
        read_image(tmp_path / "short.mha")


def _jpeg2000_copy(rel: tuple, dest):
    """The real series ``rel``, JPEG 2000 compressed (OpenJPEG through pydicom), in ``dest``."""
    from pydicom.uid import JPEG2000Lossless

    from test_io_codecs import _compressed_copy

    return _compressed_copy(rel, dest, JPEG2000Lossless)


@pytest.mark.parametrize("allowed, want", [({0}, 1), ({0, 1}, 2)])
def test_dicom_decoding_threads_follow_the_allowed_cores(tmp_path, monkeypatch, allowed, want):
    """JPEG 2000 slices decode in threads, as many as the slices, at most 8 and at most the cores: the host's count
    (os.cpu_count, 64 here) was taken, not the cores this process may use (``taskset -c 0``, a cpuset), so one
    allowed core got 3 threads. The volume is the same either way."""
    import concurrent.futures

    import pydicom

    from medseg import cpu
    from medseg.io import dicom
    from medseg.io.dicom_pixels import parallel_decode_helps

    rel = ("dicom", "dcmqi_segmentations", "ct-3slice")
    folder = _jpeg2000_copy(rel, tmp_path / "j2k")
    if not parallel_decode_helps(pydicom.dcmread(next(folder.iterdir()))):
        pytest.skip("JPEG 2000 decodes under the GIL here (imagecodecs not installed): no threads are used")
    ref = dicom.load_series(data_path(*rel))
    pools, real = [], concurrent.futures.ThreadPoolExecutor

    def pool(workers=None, *args, **kwargs):
        pools.append(workers)
        return real(workers, *args, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", pool)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(allowed))
    monkeypatch.setattr(cpu, "cpu_quota", lambda: None)  # this machine's container quota left out
    img = dicom.load_series(folder)
    assert pools == ([want] if want > 1 else [])
    assert np.array_equal(img.array, ref.array)
