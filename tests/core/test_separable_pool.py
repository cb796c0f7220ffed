import pytest
import torch

from ebm_refine.core import box_roi_align
from ebm_refine.core.separable_pool import SeparableRoIAlign, bin_major_weight, separable_box_roi_align

from test_roi_pool import random_boxes


def roi_align_axis_weights(lo, hi, bins: int, sampling_ratio: int, length: int):
    """(N, bins, length) RoI Align interpolation weights along one axis, for (N,) box edges ``lo``, ``hi`` in
    feature pixels with integer pixel centres: the pooling's own weights on a map of one row."""
    # spatial_scale = 1 puts box edge x at position x - 0.5.
    pool = SeparableRoIAlign(lo.new_zeros(1, 1, length), (1, bins), 1.0, sampling_ratio)
    boxes = torch.stack([lo + 0.5, torch.zeros_like(lo), hi + 0.5, torch.ones_like(lo)], dim=1)
    return pool._weights(boxes, 0)[0][0, :, :, :length]


@pytest.mark.parametrize("output_size", [(5, 3), (4, 4)])  # both axes in one pass when square
def test_matches_box_roi_align_forward_and_both_gradients(output_size):
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(1, 6, 13, 17, generator=g, dtype=torch.float64)
    boxes = random_boxes(9, 17 * 8, 13 * 8, g, dtype=torch.float64)
    # Boxes hanging over the border exercise the clamping rule; one sits exactly on pixel centres.
    boxes = torch.cat([boxes, torch.tensor([[-20.0, -9.0, 60.3, 40.1], [100.0, 70.0, 150.0, 130.0],
                                            [4.0, 4.0, 36.0, 36.0]], dtype=torch.float64)])
    w = torch.randn(12, 6, *output_size, generator=g, dtype=torch.float64)
    results = []
    for op in (lambda f, b: box_roi_align(f, [b], output_size, 1 / 8, 2),
               lambda f, b: separable_box_roi_align(f, b, output_size, 1 / 8, 2)):
        f = feat.clone().requires_grad_(True)
        b = boxes.clone().requires_grad_(True)
        out = op(f, b)
        gf, gb = torch.autograd.grad((out * w).sum(), (f, b))
        results.append((out, gf, gb))
    for ref, ours in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-10)
    assert results[0][2].abs().max() > 0.1  # the comparison is not between zeros


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(3, 9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    boxes = random_boxes(4, 11 * 4, 9 * 4, g, dtype=torch.float64).requires_grad_(True)
    for size in ((3, 4), 3):
        assert torch.autograd.gradcheck(lambda f, b: separable_box_roi_align(f, b, size, 0.25, 2), (feat, boxes),
                                        eps=1e-6, atol=1e-6)


def test_window_of_the_map_with_shifted_boxes_equals_the_whole_map():
    g = torch.Generator().manual_seed(2)
    feat = torch.randn(4, 30, 30, generator=g)
    boxes = torch.tensor([[90.3, 80.2, 150.7, 140.9], [100.0, 95.5, 130.2, 120.1]])  # cells ~11..19
    window = feat[:, 8:24, 9:25]  # rows 8..23, cols 9..24
    full = separable_box_roi_align(feat, boxes, 5, 1 / 8)
    part = separable_box_roi_align(window, boxes - torch.tensor([9.0, 8.0, 9.0, 8.0]) * 8, 5, 1 / 8)
    torch.testing.assert_close(part, full)


def test_axis_weights_are_a_partition_of_unity_and_match_bilinear_sampling():
    lo = torch.tensor([1.3, -2.0, 5.0], dtype=torch.float64)
    hi = torch.tensor([7.9, 3.1, 5.5], dtype=torch.float64)
    w = roi_align_axis_weights(lo, hi, 4, 2, 10)
    assert w.shape == (3, 4, 10)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, dtype=torch.float64))
    # Box 1, bin 0: samples at -2 + 5.1 * (0.5, 1.5) / 8 -> clamped to 0 and -0.406 -> 0: all weight on pixel 0.
    assert w[1, 0, 0].item() == 1.0
    # Box 2, bin 3: samples at 5 + 0.5 * (6.5, 7.5) / 8 = 5.406, 5.469 -> pixel 5: 0.5625, pixel 6: 0.4375.
    torch.testing.assert_close(w[2, 3, 5:7], torch.tensor([0.5625, 0.4375], dtype=torch.float64))


def test_prepared_map_bin_major_layout_offset_and_box_grad():
    # A linear layer on the bin-major output with the reordered weight equals the layer on RoI Align's
    # (C, Ph, Pw) flattening; the window offset equals shifting the boxes; box_grad equals autograd.
    g = torch.Generator().manual_seed(3)
    feat = torch.randn(5, 12, 14, generator=g, dtype=torch.float64)
    boxes = random_boxes(6, 14 * 8, 12 * 8, g, dtype=torch.float64) + 40.0
    weight = torch.randn(7, 5 * 3 * 3, generator=g, dtype=torch.float64)
    pool = SeparableRoIAlign(feat, 3, 1 / 8, offset=(40.0, 40.0))
    pooled, state = pool.forward(boxes)
    assert pooled.shape == (6, 3, 5, 3)
    b = (boxes - 40.0).requires_grad_(True)
    ref = box_roi_align(feat[None], [b], 3, 1 / 8, 2)
    out_ref = ref.flatten(1) @ weight.t()
    torch.testing.assert_close(pooled.reshape(6, -1) @ bin_major_weight(weight, 5, 3).t(), out_ref.detach())
    upstream = torch.randn(6, 7, generator=g, dtype=torch.float64)
    (grad_ref,) = torch.autograd.grad((out_ref * upstream).sum(), b)
    grad_pooled = (upstream @ bin_major_weight(weight, 5, 3)).view(6, 3, 5, 3)
    torch.testing.assert_close(pool.box_grad(state, grad_pooled), grad_ref)
    assert grad_ref.abs().max() > 0.01
    with pytest.raises(ValueError, match="one image"):
        SeparableRoIAlign(feat[None].expand(2, -1, -1, -1), 3, 1 / 8)
