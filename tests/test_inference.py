"""Sliding-window inference reproduces the reference grid and uniform averaging (docs/algorithms.md §3.1)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks.inference import reference_overlap, sliding_window_probs, window_count


def reference_sliding_window(image: torch.Tensor, net: torch.nn.Module, patch: tuple[int, ...],
                             stride: tuple[int, ...]) -> torch.Tensor:
    """The TAK/GA ``test_single_case`` loop, written out: centred zero padding, n = ceil((S-P)/s)+1
    windows per axis at min(s*i, S-P), softmax summed and divided by the count."""
    _, _, *shape = image.shape
    pads = [max(p - s, 0) for s, p in zip(shape, patch)]
    padded = torch.nn.functional.pad(image, [v for pad in reversed(pads) for v in (pad // 2, pad - pad // 2)])
    size = padded.shape[2:]
    starts = [[min(st * i, s - p) for i in range(math.ceil((s - p) / st) + 1)] for s, p, st in zip(size, patch, stride)]
    score, count = None, torch.zeros(size)
    for x in starts[0]:
        for y in starts[1]:
            for z in starts[2]:
                window = (slice(x, x + patch[0]), slice(y, y + patch[1]), slice(z, z + patch[2]))
                probs = net(padded[(..., *window)]).softmax(1)
                if score is None:
                    score = torch.zeros((1, probs.shape[1], *size))
                score[(..., *window)] += probs
                count[window] += 1
    out = score / count
    crop = tuple(slice(pad // 2, pad // 2 + s) for pad, s in zip(pads, shape))
    return out[(..., *crop)]


@pytest.mark.parametrize(("shape", "patch", "stride"), [
    ((40, 37, 29), (16, 16, 16), (8, 8, 4)),     # uneven: last window flush with the border
    ((20, 33, 16), (16, 16, 16), (16, 16, 16)),  # stride == patch
    ((12, 40, 18), (16, 16, 16), (5, 7, 3)),     # one axis shorter than the patch: padding
    ((96, 50, 45), (32, 32, 32), (21, 10, 32)),  # strides that would truncate with a naive overlap
])
def test_matches_reference_loop(shape: tuple[int, ...], patch: tuple[int, ...], stride: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(4, 3, 3, padding=1))
    image = torch.rand(1, 1, *shape)
    with torch.no_grad():
        expected = reference_sliding_window(image, net, patch, stride)
        actual = sliding_window_probs(image, net, patch, stride)
    assert actual.shape == (1, 3, *shape)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("shape", "patch", "stride"), [
    ((40, 37, 29), (16, 16, 16), (8, 8, 4)),
    ((12, 40, 18), (16, 16, 16), (5, 7, 3)),
    ((96, 50, 45), (32, 32, 32), (21, 10, 32)),
])
def test_matches_monai_with_the_reference_overlap(shape: tuple[int, ...], patch: tuple[int, ...],
                                                  stride: tuple[int, ...]) -> None:
    """MONAI's sliding_window_inference, given the overlap that reproduces the reference grid, agrees."""
    from monai.inferers import sliding_window_inference
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(4, 3, 3, padding=1))
    image = torch.rand(2, 1, *shape)  # a batch of two volumes
    with torch.no_grad():
        expected = sliding_window_inference(image, list(patch), 4, lambda x: net(x).softmax(1),
                                            overlap=reference_overlap(patch, stride), mode="constant",
                                            padding_mode="constant", cval=0.0)
        actual = sliding_window_probs(image, net, patch, stride, sw_batch_size=3)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_overlap_gives_the_reference_interval() -> None:
    for p, s in [(96, 32), (96, 16), (64, 16), (128, 32), (48, 16), (32, 21)]:
        (overlap,) = reference_overlap([p], [s])
        assert int(p * (1 - overlap)) == s


def test_window_count() -> None:
    assert window_count((160, 160, 80), (96, 96, 96), (32, 32, 16)) == 3 * 3 * 1
    assert window_count((64, 64, 48), (48, 48, 32), (16, 16, 16)) == 2 * 2 * 2
    assert np.prod([math.ceil((s - 16) / st) + 1 for s, st in zip((40, 37, 29), (8, 8, 4))]) == window_count((40, 37, 29), (16,) * 3, (8, 8, 4))


def test_bad_stride_rejected() -> None:
    with pytest.raises(ValueError, match="stride"):
        reference_overlap([32], [40])
