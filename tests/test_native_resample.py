"""The plane-by-plane resampling back to the input's grid equals resizing the whole volume at once."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medseg.infer.native import PlaneResampler
from medseg.infer.sliding_window import sliding_window_predict


def _chunks(n, rng):
    """Random run lengths covering 0..n-1 in order."""
    edges = sorted(set(rng.integers(1, n, size=rng.integers(0, n)).tolist())) if n > 1 else []
    return list(zip([0, *edges], [*edges, n]))


@pytest.mark.parametrize("src,dst", [((9, 7, 11), (20, 5, 23)), ((12, 12, 30), (7, 19, 13)),
                                     ((6, 8, 10), (6, 8, 10)), ((5, 9), (11, 4)), ((4, 5, 3), (4, 5, 40))])
def test_plane_by_plane_equals_whole_volume_interpolation(src, dst):
    rng = np.random.default_rng(len(src) + src[0])
    k = 4
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(k, *src)).astype(np.float32)) * 3, 0)
    mode = "trilinear" if len(src) == 3 else "bilinear"
    ref = F.interpolate(probs[None], size=dst, mode=mode, align_corners=False)[0] if src != dst else probs
    out = PlaneResampler(src, dst, k, keep_probabilities=True)
    for a, b in _chunks(src[-1], rng):
        assert not out.finished
        out.add(probs[..., a:b], a)
    assert out.finished
    np.testing.assert_allclose(out.probabilities, ref.numpy(), atol=2e-6)
    top2 = torch.topk(ref, 2, dim=0).values
    clear = (top2[0] - top2[1] > 1e-5).numpy()  # argmax compared where no float-rounding tie is possible
    np.testing.assert_array_equal(out.labels[clear], ref.argmax(0).numpy()[clear])
    assert out.labels.dtype == np.uint8 and clear.mean() > 0.99


def test_chunks_out_of_order_are_refused():
    out = PlaneResampler((4, 4, 8), (4, 4, 16), 2)
    probs = torch.rand(2, 4, 4, 8)
    with pytest.raises(RuntimeError, match="not kept"):
        out.add(probs[..., 5:], 5)


def test_sliding_window_sink_gets_the_same_output_in_order():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 3, padding=1)
    x = torch.rand(1, 20, 18, 45)
    whole = sliding_window_predict(net, x, [16, 16, 16], overlap=0.5, device="cpu", precision="fp32")
    parts = []
    ret = sliding_window_predict(net, x, [16, 16, 16], overlap=0.5, device="cpu", precision="fp32",
                                 sink=lambda part, first: parts.append((first, part)))
    assert ret is None and len(parts) > 1
    firsts = [f for f, _ in parts]
    assert firsts == sorted(firsts) and firsts[0] == 0
    torch.testing.assert_close(torch.cat([p for _, p in parts], -1), whole)


def _filled(src, dst, k, spill_dir, seed=0):
    """A PlaneResampler keeping probabilities, fed in random chunks."""
    rng = np.random.default_rng(seed)
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(k, *src)).astype(np.float32)), 0)
    out = PlaneResampler(src, dst, k, keep_probabilities=True, spill_dir=spill_dir)
    for a, b in _chunks(src[-1], rng):
        out.add(probs[..., a:b], a)
    return out


def test_probabilities_live_in_an_unlinked_file_not_in_memory(tmp_path):
    """The kept probabilities are a read-only view of a file in spill_dir that has no name (nothing to clean up),
    and filling them does not grow the process's anonymous memory by their size."""
    status = Path("/proc/self/status")
    if not status.exists() or "RssAnon" not in status.read_text():
        pytest.skip("needs Linux /proc/self/status (RssAnon)")

    def anon_mb():
        line = [ln for ln in status.read_text().splitlines() if ln.startswith("RssAnon")][0]
        return int(line.split()[1]) / 1024

    spill = tmp_path / "spill"
    spill.mkdir()
    k, src, dst = 4, (32, 32, 24), (128, 128, 96)  # 25 MB of float32 probabilities at full resolution
    warm = _filled(src, dst, k, spill, seed=1)  # allocator and torch warm-up, outside the measurement
    del warm
    before = anon_mb()
    out = _filled(src, dst, k, spill)
    grown = anon_mb() - before
    probs = out.probabilities
    assert probs.shape == (k, *dst) and probs.dtype == np.float32 and not probs.flags.writeable
    assert list(spill.iterdir()) == []
    assert grown < 10, f"anonymous memory grew by {grown:.1f} MB for 25 MB of probabilities"
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_write_probabilities_equals_write_image(tmp_path):
    """The class-by-class writer writes the same bytes as write_image (3D, and a moved-axis view as 2D plans give)."""
    from medseg.infer.native import write_probabilities
    from medseg.io.image import Image
    from medseg.io.readers import read_image
    from medseg.io.writers import write_image

    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array([[0.8 * c, -0.8 * s, 0, -90.5], [0.8 * s, 0.8 * c, 0, 12.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])
    out = _filled((9, 7, 11), (20, 15, 23), 3, tmp_path)
    for name, arr in (("3d", out.probabilities), ("moved", np.moveaxis(out.probabilities, 1, 3))):
        img = Image(arr, affine, {}, True)
        a = write_image(img, tmp_path / f"{name}_ref.nii.gz")
        b = write_probabilities(img, tmp_path / f"{name}.nii.gz")
        assert b.read_bytes() == a.read_bytes()  # gzip header too: no temporary name, no time stamp
        back = read_image(b)
        assert np.array_equal(back.array, arr) and np.allclose(back.affine, affine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3d.nii.gz", "3d_ref.nii.gz", "moved.nii.gz",
                                                           "moved_ref.nii.gz"]


def test_spill_disk_full_is_a_clean_input_error(tmp_path, monkeypatch):
    import errno
    import shutil as sh

    import medseg.infer.native as native
    from medseg.errors import InputError

    real = sh.disk_usage
    monkeypatch.setattr(native.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(InputError, match=r"disk full: 0\.00 GB needed .* 0\.00 GB free"):
        PlaneResampler((4, 4, 8), (8, 8, 16), 3, keep_probabilities=True, spill_dir=tmp_path)
    monkeypatch.setattr(native.shutil, "disk_usage", real)
    out = PlaneResampler((4, 4, 8), (8, 8, 16), 3, keep_probabilities=True, spill_dir=tmp_path)

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(native.os, "pwrite", full)
    with pytest.raises(InputError, match="cannot write probabilities .disk full") as err:
        out.add(torch.rand(3, 4, 4, 8), 0)
    assert str(tmp_path) in str(err.value) and list(tmp_path.iterdir()) == []


def test_spill_without_pwrite_writes_the_same_probabilities(tmp_path, monkeypatch):
    """Where os.pwrite is missing (Windows), seek + write on the file object stores the same planes."""
    import os

    ref = _filled((9, 7, 11), (20, 15, 23), 3, tmp_path).probabilities
    monkeypatch.delattr(os, "pwrite")
    out = _filled((9, 7, 11), (20, 15, 23), 3, tmp_path).probabilities
    assert np.array_equal(out, ref) and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("file_axes", [(0, 1, 2), (2, 0, 1), (1, 0, 2), (0, 2, 1), (1, 2, 0), (2, 1, 0)])
def test_spill_in_file_axis_order_equals_the_transposed_probabilities(tmp_path, monkeypatch, file_axes):
    """With ``file_axes`` (a 2D model's slices-first output) the probabilities are the same values in the
    file's axis order, each class Fortran-contiguous (NIfTI order, read contiguously), whatever the buffer."""
    import medseg.infer.native as native

    src, dst = (9, 7, 11), (20, 15, 23)
    ref = _filled(src, dst, 3, tmp_path).probabilities
    monkeypatch.setattr(native.ProbabilitySpill, "BUFFER_BYTES", 3 * 4 * 20 * 15 * 5)  # 5 planes at a time
    rng = np.random.default_rng(0)
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(3, *src)).astype(np.float32)), 0)
    out = PlaneResampler(src, dst, 3, keep_probabilities=True, spill_dir=tmp_path, file_axes=file_axes)
    for a, b in _chunks(src[-1], rng):
        out.add(probs[..., a:b], a)
    got = out.probabilities
    assert np.array_equal(got, np.moveaxis(ref, [1, 2, 3], [1 + a for a in file_axes]))
    assert all(got[k].flags.f_contiguous for k in range(3)) and list(tmp_path.iterdir()) == []


def test_spill_writes_planes_of_another_axis_in_runs(tmp_path, monkeypatch):
    """Planes along the file's first axis are gathered and written as one contiguous run per position along
    the others, not one strided write per voxel row and plane."""
    from medseg.infer.native import ProbabilitySpill

    spill = ProbabilitySpill(2, (6, 4, 5), tmp_path, plane_axes=(1, 2, 0))
    sizes = []
    real = spill._write_at
    monkeypatch.setattr(spill, "_write_at", lambda data, offset: sizes.append(len(data)) or real(data, offset))
    vol = np.arange(2 * 6 * 4 * 5, dtype=np.float32).reshape(2, 6, 4, 5)
    for i in range(6):
        spill.write(vol[:, i:i + 1].transpose(0, 2, 3, 1), i)  # (classes, 4, 5, 1): plane i of axis 0
    assert sizes == [4 * 6] * (2 * 4 * 5)  # one run of the 6 planes per (y, z) and class
    assert np.array_equal(spill.array(), vol)
