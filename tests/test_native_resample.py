"""The plane-by-plane resampling back to the input's grid equals resizing the whole volume at once."""

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
