"""`medseg data`: finding sample data and the verify/unpack logic of fetch, on local archives (no network)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medseg import data as mdata
from medseg.errors import InputError

from conftest import assert_clean_error, data_path, run_cli


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    return path


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def test_unpack_verifies_checksum_and_leaves_nothing_on_mismatch(tmp_path):
    arc = _tar(tmp_path / "a.tar", {"Task/dataset.json": b"{}", "Task/imagesTr/x.nii.gz": b"123"})
    with pytest.raises(InputError, match="checksum mismatch"):
        mdata.unpack_archive(arc, tmp_path / "out", expected_md5="0" * 32)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.tar"]
    out = mdata.unpack_archive(arc, tmp_path / "out", expected_md5=_md5(arc))
    assert (out / "Task" / "imagesTr" / "x.nii.gz").read_bytes() == b"123"


def test_unpack_refuses_truncated_and_unsafe_archives(tmp_path):
    arc = _tar(tmp_path / "a.tar", {"Task/f.bin": b"x" * 5000})
    trunc = tmp_path / "t.tar"
    trunc.write_bytes(arc.read_bytes()[:700])
    with pytest.raises(InputError):
        mdata.unpack_archive(trunc, tmp_path / "o1")
    assert not (tmp_path / "o1").exists()
    evil = _tar(tmp_path / "evil.tar", {"../escape.txt": b"x"})
    with pytest.raises(InputError, match="outside"):
        mdata.unpack_archive(evil, tmp_path / "o2")
    assert not (tmp_path / "escape.txt").exists()


def test_fetch_msd_layout_with_local_downloader(tmp_path, monkeypatch):
    arc = _tar(tmp_path / "src.tar", {"Task04_Hippocampus/dataset.json": b'{"labels": {}}',
                                      "Task04_Hippocampus/imagesTr/h_001.nii.gz": b"img"})
    src = mdata.SOURCES["msd-hippocampus"]
    monkeypatch.setitem(mdata.SOURCES, "msd-hippocampus",
                        mdata.Source(src.name, "file:///local/Task04_Hippocampus.tar", _md5(arc), src.archive_root,
                                     src.licence, src.description))
    calls = []

    def fake_download(url, dest):
        calls.append(url)
        dest.write_bytes(arc.read_bytes())
        return dest

    out = mdata.fetch("msd-hippocampus", tmp_path / "data", downloader=fake_download)
    assert calls == ["file:///local/Task04_Hippocampus.tar"]
    assert (out / "imagesTr" / "h_001.nii.gz").read_bytes() == b"img"
    with pytest.raises(InputError, match="already exists"):
        mdata.fetch("msd-hippocampus", tmp_path / "data", downloader=fake_download)


def test_dsb_conversion_rebuilds_instance_maps_from_real_masks(tmp_path):
    """Split a real DSB label map into one PNG per nucleus (the upstream layout); conversion must rebuild it."""
    import imageio.v3 as iio
    import tifffile

    labels_dir = data_path("dsb2018_fluo", "labels")
    label_file = sorted(labels_dir.glob("*.tif"))[0]
    cid = label_file.stem
    ref = tifffile.imread(label_file)
    img = np.asarray(iio.imread(data_path("dsb2018_fluo", "images", f"{cid}.png")))
    buf = tmp_path / "stage1.zip"
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"stage1_train/{cid}/images/{cid}.png", iio.imwrite("<bytes>", img, extension=".png"))
        for k in np.unique(ref)[1:]:
            mask = ((ref == k) * 255).astype(np.uint8)
            zf.writestr(f"stage1_train/{cid}/masks/m{k:04d}.png", iio.imwrite("<bytes>", mask, extension=".png"))
    unpacked = mdata.unpack_archive(buf, tmp_path / "u")
    n = mdata.dsb_to_instance_layout(unpacked / "stage1_train", tmp_path / "out")
    assert n == 1
    got = tifffile.imread(tmp_path / "out" / "labels" / f"{cid}.tif")
    # same partition into objects (ids may be renumbered)
    assert len(np.unique(got)) == len(np.unique(ref))
    pairs = np.unique(np.stack([ref.ravel(), got.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(ref))


def test_cli_data_fetch_unknown_and_where(tmp_path):
    assert_clean_error(run_cli("data", "fetch", "no-such-set", "-o", str(tmp_path)), "unknown dataset")
    assert list(tmp_path.iterdir()) == []
    assert_clean_error(run_cli("data", "where", "--data", str(tmp_path / "missing")), "missing", "not found")


@pytest.mark.parametrize("failure", ["offline", "cut_short"])
def test_fetch_without_network_is_a_clean_error_and_leaves_nothing(tmp_path, monkeypatch, failure):
    """`medseg data fetch` is the only network use: offline (or a transfer cut short) it exits 2 with one line naming
    the URL, and leaves no archive or partial file behind."""
    import http.client
    import urllib.error
    import urllib.request

    class CutShort:
        headers = {"Content-Length": "100"}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n):
            raise http.client.IncompleteRead(b"x" * 10, 90)

    def urlopen(url, timeout=None):
        if failure == "offline":
            raise urllib.error.URLError(OSError(101, "Network is unreachable"))
        return CutShort()

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    out = tmp_path / "data"
    res = run_cli("data", "fetch", "msd-hippocampus", "-o", out)
    assert_clean_error(res, "download failed", mdata.SOURCES["msd-hippocampus"].url)
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_fetch_with_nothing_answering_is_a_clean_error_through_the_real_download(tmp_path, monkeypatch):
    """As offline, but through urllib itself (no stand-in for urlopen): the source's host refuses the connection (a
    loopback port nobody listens on). One line naming the URL, exit 2, no archive or partial file."""
    import dataclasses
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = mdata.SOURCES["msd-hippocampus"]
    url = f"http://127.0.0.1:{port}/{src.url.rsplit('/', 1)[-1]}"
    monkeypatch.setitem(mdata.SOURCES, "msd-hippocampus", dataclasses.replace(src, url=url))
    out = tmp_path / "data"
    res = run_cli("data", "fetch", "msd-hippocampus", "-o", out)
    assert_clean_error(res, "download failed", url)
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_a_download_cut_short_leaves_no_file(tmp_path):
    """A server that promises more bytes than it sends (a dropped connection): one InputError naming the URL and
    'download failed', and neither the archive nor a temporary file left beside it."""
    import http.server
    import threading

    class Short(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 22))
            self.end_headers()
            self.wfile.write(b"x" * 1000)  # then the connection closes

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Short)
    threading.Thread(target=server.handle_request, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/archive.tar"
    try:
        with pytest.raises(InputError, match="download failed") as err:
            mdata.download(url, tmp_path / "archive.tar", progress=False)
    finally:
        server.server_close()
    assert url in str(err.value) and "cut short: 1000 of" in str(err.value)
    assert not list(tmp_path.iterdir())


def test_no_module_but_the_explicit_fetch_reaches_for_the_network():
    """Only ``medseg.data`` (``medseg data fetch``, on request) may import a network library; everything else runs
    offline. Read from the source (an import inside a function counts too)."""
    import ast

    from conftest import REPO

    net = {"urllib", "http", "socket", "requests", "ftplib", "httpx", "urllib3", "aiohttp"}
    found = []
    for path in sorted((REPO / "medseg").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [(path.relative_to(REPO).as_posix(), n) for n in names if n.split(".")[0] in net]
    assert found and {p for p, _ in found} == {"medseg/data.py"}, found


def test_commands_run_with_the_network_blocked(tmp_path, monkeypatch):
    """With every socket connection and name lookup failing, DICOM conversion and cell counting run as usual."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError(101, "Network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    series = data_path("dicom", "ct_rtstruct")
    image = sorted(data_path("dsb2018_fluo", "images").glob("*.png"))[0]
    assert run_cli("convert", series, tmp_path / "ct.nii.gz").code == 0
    res = run_cli("cells", "count", "-i", image, "-o", tmp_path / "cells", "--classical")
    assert res.code == 0, res.err
    assert (tmp_path / "cells" / "counts.csv").is_file()
