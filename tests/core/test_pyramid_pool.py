import pickle

import pytest
import torch

from ebm_refine.core import MultiLevelBoxPooler
from ebm_refine.core.pyramid_pool import PyramidRoIAlign
from ebm_refine.core.separable_pool import bin_major_weight

from test_roi_pool import random_boxes


def _pyramid(g, batch=2, channels=5, height=64, width=80, dtype=torch.float64):
    return [torch.randn(batch, channels, height // s, width // s, generator=g, dtype=dtype) for s in (4, 8, 16, 32)]


@pytest.mark.parametrize("output_size,sampling_ratio", [((7, 5), 2), (3, 1), (4, 3)])
def test_prepared_pooling_equals_the_pooler_and_autograd_through_it(output_size, sampling_ratio):
    g = torch.Generator().manual_seed(0)
    feats = _pyramid(g)
    # A small canonical size spreads boxes of an 80 x 64 image over all four levels.
    pooler = MultiLevelBoxPooler(output_size, [1 / 4, 1 / 8, 1 / 16, 1 / 32], sampling_ratio=sampling_ratio,
                                 canonical_box_size=32)
    boxes = random_boxes(40, 80, 64, g, dtype=torch.float64)
    # Over the border (clamped samples) and the whole image.
    boxes = torch.cat([boxes, torch.tensor([[-9.0, -3.0, 30.0, 70.0], [0.0, 0.0, 80.0, 64.0]], dtype=torch.float64)])
    n = boxes.shape[0]
    image = torch.randint(0, 2, (n, 1), generator=g).double()
    rois = torch.cat([image, boxes], 1)
    groups = pooler.level_groups(rois)
    assert all(len(idx) > 0 for idx in groups)  # every level is exercised

    pool = pooler.prepare(feats, rois, groups)
    pooled, state = pool.forward(boxes)
    b = boxes.clone().requires_grad_(True)
    ref = pooler(feats, torch.cat([image, b], 1), groups)  # (R, C, Ph, Pw)
    ph, pw = pool.ph, pool.pw
    torch.testing.assert_close(pooled.view(n, ph, pw, 5).permute(0, 3, 1, 2), ref.detach(), rtol=1e-12, atol=1e-12)
    upstream = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (grad_ref,) = torch.autograd.grad((ref * upstream).sum(), b)
    grad = pool.box_grad(state, upstream.permute(0, 2, 3, 1).reshape(n, -1))
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)
    assert grad_ref.abs().max() > 0.1  # the comparison is not between zeros


def test_samples_exactly_on_pixel_centres_on_the_last_one_and_past_it():
    # On a 16 x 16 stride-4 map (a power of 2, so that the reference's grid normalisation is exact), x from
    # 2 to 82 puts the 10 samples of a 5-bin row at 1, 3, ..., 19 and y from 2 to 114 the 14 samples of 7
    # bins at 1, 3, ..., 27: on pixel centres (right derivative), on the last one (15: no gradient, its
    # upper neighbour is past the map) and past it (clamped).
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(1, 4, 16, 16, generator=g, dtype=torch.float64)]
    pooler = MultiLevelBoxPooler((7, 5), [1 / 4])
    boxes = torch.tensor([[2.0, 2.0, 82.0, 114.0], [6.0, 2.0, 46.0, 30.0]], dtype=torch.float64)
    pool = pooler.prepare(feats, [boxes])
    pooled, state = pool.forward(boxes)
    b = boxes.clone().requires_grad_(True)
    ref = pooler(feats, [b])
    upstream = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (grad_ref,) = torch.autograd.grad((ref * upstream).sum(), b)
    torch.testing.assert_close(pooled.view(2, 7, 5, 4).permute(0, 3, 1, 2), ref.detach())
    torch.testing.assert_close(pool.box_grad(state, upstream.permute(0, 2, 3, 1).reshape(2, -1)), grad_ref)
    assert (grad_ref.abs() > 1e-3).all()


def test_linear_weight_on_channels_last_equals_the_layer_on_roi_align_flattening():
    g = torch.Generator().manual_seed(1)
    feats = _pyramid(g, batch=1, channels=3)
    pooler = MultiLevelBoxPooler((3, 2), [1 / 4, 1 / 8, 1 / 16, 1 / 32])
    boxes = random_boxes(6, 80, 64, g, dtype=torch.float64)
    pool = pooler.prepare(feats, [boxes])
    weight = torch.randn(4, 3 * 3 * 2, generator=g, dtype=torch.float64)
    pooled, _ = pool.forward(boxes)
    ref = pooler(feats, [boxes]).flatten(1) @ weight.t()
    torch.testing.assert_close(pooled @ pool.linear_weight(weight).t(), ref)
    assert torch.equal(pool.linear_weight(weight), bin_major_weight(weight, 3, (3, 2), layout="hwc"))
    with pytest.raises(ValueError, match="layout"):
        bin_major_weight(weight, 3, (3, 2), layout="chw")


def test_states_stay_valid_and_a_stale_pooling_or_wrong_box_count_is_refused():
    g = torch.Generator().manual_seed(2)
    feats = _pyramid(g, batch=1)
    pooler = MultiLevelBoxPooler(7, [1 / 4, 1 / 8, 1 / 16, 1 / 32])
    boxes = random_boxes(3, 80, 64, g, dtype=torch.float64)
    pool = pooler.prepare(feats, [boxes])
    pooled, first = pool.forward(boxes)
    upstream = torch.randn(pooled.shape, generator=g, dtype=torch.float64)
    expected = pool.box_grad(first, upstream)
    pool.forward(boxes + 1.0)  # a later call leaves the earlier state usable
    torch.testing.assert_close(pool.box_grad(first, upstream), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="prepared for 3 boxes"):
        pool.forward(boxes[:2])
    # The pooler keeps its scratch memory for the next prepare(), which makes this pooling stale.
    again = pooler.prepare(feats, [boxes + 2.0])
    with pytest.raises(RuntimeError, match="prepare this one again"):
        pool.forward(boxes)
    with pytest.raises(RuntimeError, match="prepare this one again"):
        pool.box_grad(first, upstream)
    assert again.table.data_ptr() == pool.table.data_ptr()  # the same memory, not a fresh 100 MB
    assert not pickle.loads(pickle.dumps(pooler))._scratch._tensors  # scratch tensors are not saved
    # No boxes at all: an empty pooling, not an error.
    empty = pooler.prepare(feats, [boxes[:0]])
    out, state = empty.forward(boxes[:0])
    assert out.shape == (0, 7 * 7 * 5) and empty.box_grad(state, out).shape == (0, 4)


def test_multiply_adds_per_box():
    # RoI Align 7 x 7, 2 x 2 samples of 4 pixels per bin, 256 channels: 200,704 one way.
    assert PyramidRoIAlign.multiply_adds_per_box(256, 7, 2, box_grad=False) == 7 * 7 * 16 * 256
    assert PyramidRoIAlign.multiply_adds_per_box(256, (7, 7), 2) == 2 * 200704
