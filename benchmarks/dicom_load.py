"""DICOM series loading: medseg vs SimpleITK's ImageSeriesReader, in the same process and run.

Two jobs on the real data (``../shared/data`` or ``--data``):

* ``ct``: the 20-slice JPEG 2000 CT (``totalseg_example/ct_dicom``): folder -> volume;
* ``ct`` once more with pylibjpeg-openjpeg (holds the GIL: serial) instead of imagecodecs;
* ``mr``: the MR study (``dicom/mr_study``, 5 series in 5 sub-folders, 120 files): every series.

SimpleITK gets the easier job: it is handed each series folder (GDCM's series scan is not
recursive), then ``GetGDCMSeriesIDs`` + ``GetGDCMSeriesFileNames`` + ``Execute``. medseg is
handed the study root: ``discover_series`` (recursive) + ``load_series`` for every series.
Both outputs are checked equal (geometry and voxels) before timing. Runs alternate between
the two readers (so machine load hits both alike), after one untimed warm-up of each (warm
file cache); the median of ``--repeat`` runs is reported.

Usage::

    python benchmarks/dicom_load.py [--data DIR] [--repeat 7] [--json benchmarks/out/dicom_load.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sitk_load(folders):
    import SimpleITK as sitk

    out = []
    for folder in folders:
        reader = sitk.ImageSeriesReader()
        for uid in reader.GetGDCMSeriesIDs(str(folder)):
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
            out.append(reader.Execute())
    return out


def medseg_load(root):
    from medseg.io.dicom import discover_series, load_series

    return [load_series(s) for s in discover_series(root)]


def check_equal(ours, theirs, job):
    from medseg.io.image import Image

    assert len(ours) == len(theirs), f"{job}: {len(ours)} vs {len(theirs)} series"
    key = lambda img: (img.shape, round(float(img.array.mean()), 3))  # noqa: E731
    theirs = sorted((Image.from_sitk(s) for s in theirs), key=key)
    for a, b in zip(sorted(ours, key=key), theirs):
        assert a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-3), job
        assert np.array_equal(a.array, b.array), job


def time_job(name, ours, theirs, repeat):
    check_equal(ours(), theirs(), name)  # also the warm-up
    t_ours, t_theirs, c_ours, c_theirs = [], [], [], []
    for _ in range(repeat):
        for fn, acc, cpu in ((ours, t_ours, c_ours), (theirs, t_theirs, c_theirs)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            acc.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)  # CPU seconds of all threads: less sensitive to machine load
    m_ours, m_theirs = statistics.median(t_ours), statistics.median(t_theirs)
    return {"job": name, "medseg_s": m_ours, "simpleitk_s": m_theirs, "ratio_simpleitk_over_medseg": m_theirs / m_ours,
            "medseg_cpu_s": statistics.median(c_ours), "simpleitk_cpu_s": statistics.median(c_theirs),
            "medseg_runs_s": t_ours, "simpleitk_runs_s": t_theirs}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("MEDSEG_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "out" / "dicom_load.json")
    args = ap.parse_args(argv)
    ct, mr = args.data / "totalseg_example" / "ct_dicom", args.data / "dicom" / "mr_study"
    if not ct.is_dir() or not mr.is_dir():
        sys.exit(f"dicom_load: real data not found under {args.data} (pass --data DIR)")
    import SimpleITK as sitk

    import medseg.io.dicom_pixels as pixels

    def openjpeg_only():  # the same job without imagecodecs: what the decoder choice is worth
        saved = pixels._j2k_decoder
        import openjpeg

        pixels._j2k_decoder = lambda: (lambda b: openjpeg.decode(b, j2k_format=0), False)
        try:
            return medseg_load(ct)
        finally:
            pixels._j2k_decoder = saved

    results = [
        time_job("ct: 20-slice JPEG 2000 CT", lambda: medseg_load(ct), lambda: sitk_load([ct]), args.repeat),
        time_job("ct, pylibjpeg-openjpeg instead of imagecodecs (serial)", openjpeg_only, lambda: sitk_load([ct]),
                 args.repeat),
        time_job("mr: 5-series MR study (120 files)", lambda: medseg_load(mr),
                 lambda: sitk_load(sorted(p for p in mr.iterdir() if p.is_dir())), args.repeat),
    ]
    info = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
            "simpleitk": sitk.Version_VersionString(),
            "sitk_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
            "repeat": args.repeat, "load_avg_at_end": os.getloadavg()}
    print(f"machine: {info['machine']}; SimpleITK {info['simpleitk']} ({info['sitk_threads']} threads); "
          f"median of {args.repeat}; load average {info['load_avg_at_end'][0]:.2f}")
    print("| job | medseg wall (s) | SimpleITK wall (s) | SimpleITK / medseg (wall) | medseg CPU (s) "
          "| SimpleITK CPU (s) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['job']} | {r['medseg_s']:.3f} | {r['simpleitk_s']:.3f} | {r['ratio_simpleitk_over_medseg']:.2f} "
              f"| {r['medseg_cpu_s']:.3f} | {r['simpleitk_cpu_s']:.3f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"info": info, "results": results}, indent=2))


if __name__ == "__main__":
    main()
