import pytest
import torch
import torchvision

from ebm_refine.core import MultiLevelBoxPooler, assign_boxes_to_levels, box_roi_align


def random_boxes(n: int, w: float, h: float, g: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """Random boxes inside a w x h image with non-integer coordinates (bilinear kinks are at integers)."""
    x1 = torch.rand(n, generator=g, dtype=dtype) * (w * 0.6)
    y1 = torch.rand(n, generator=g, dtype=dtype) * (h * 0.6)
    bw = 4 + torch.rand(n, generator=g, dtype=dtype) * (w - x1 - 4)
    bh = 4 + torch.rand(n, generator=g, dtype=dtype) * (h - y1 - 4)
    return torch.stack([x1, y1, (x1 + bw).clamp(max=w), (y1 + bh).clamp(max=h)], 1)


@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
def test_forward_matches_torchvision_roi_align_inside_the_map(sampling_ratio):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 16, 25, 38, generator=g)
    boxes = random_boxes(40, 38 * 8, 25 * 8, g)
    rois = torch.cat([torch.randint(0, 2, (40, 1), generator=g).float(), boxes], 1)
    # Boxes exactly on the image border too.
    rois = torch.cat([rois, torch.tensor([[1.0, 0.0, 0.0, 38 * 8.0, 25 * 8.0]])])
    ours = box_roi_align(feats, rois, (7, 5), 1 / 8, sampling_ratio)
    ref = torchvision.ops.roi_align(feats, rois, (7, 5), 1 / 8, sampling_ratio, aligned=True)
    assert ours.shape == (41, 16, 7, 5)
    assert (ours - ref).abs().max().item() < 1e-4


def test_list_of_boxes_equals_rois_and_empty_input():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 4, 10, 10, generator=g)
    a, b = random_boxes(3, 40, 40, g), random_boxes(2, 40, 40, g)
    rois = torch.cat([torch.cat([torch.zeros(3, 1), a], 1), torch.cat([torch.ones(2, 1), b], 1)])
    torch.testing.assert_close(box_roi_align(feats, [a, b], 3, 0.25), box_roi_align(feats, rois, 3, 0.25))
    assert box_roi_align(feats, torch.zeros(0, 5), 3, 0.25).shape == (0, 4, 3, 3)


def test_box_gradients_pass_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 3, 12, 15, generator=g, dtype=torch.float64)
    boxes = random_boxes(4, 15 * 4, 12 * 4, g, dtype=torch.float64).requires_grad_(True)
    idx = torch.tensor([[0.0], [1.0], [1.0], [0.0]], dtype=torch.float64)

    def pool(bx, f):
        return box_roi_align(f, torch.cat([idx, bx], 1), (3, 4), 0.25, 2)

    assert torch.autograd.gradcheck(pool, (boxes, feats.requires_grad_(True)), eps=1e-6, atol=1e-5)


def test_box_gradient_points_towards_a_bright_blob():
    # A single Gaussian blob: moving the box towards it increases the pooled mean.
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    feat = torch.exp(-((xx - 25) ** 2 + (yy - 20) ** 2) / 30)[None, None]
    box = torch.tensor([[10.0, 12.0, 22.0, 26.0]], requires_grad=True)  # left of the blob
    box_roi_align(feat, [box], 5, 1.0).mean().backward()
    assert box.grad[0, 0] > 0 and box.grad[0, 2] > 0  # both x-edges want to move right


def test_fpn_level_assignment_follows_the_canonical_rule():
    boxes = torch.tensor([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 50, 50], [0, 0, 448, 448], [0, 0, 2000, 2000.0]])
    assert assign_boxes_to_levels(boxes, 2, 5).tolist() == [2, 1, 0, 3, 3]


def test_multilevel_pooler_uses_the_assigned_level():
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(1, 8, 256 // s, 256 // s, generator=g) for s in (4, 8, 16, 32)]
    pooler = MultiLevelBoxPooler(7, [1 / 4, 1 / 8, 1 / 16, 1 / 32])
    boxes = torch.tensor([[10.0, 10.0, 40.5, 40.5], [3.3, 5.1, 250.0, 240.0], [60.2, 70.1, 170.7, 160.3]])
    out = pooler(feats, [boxes])
    levels = assign_boxes_to_levels(boxes, 2, 5)
    for i, l in enumerate(levels.tolist()):
        ref = torchvision.ops.roi_align(feats[l], [boxes[i : i + 1]], 7, 1 / 2 ** (l + 2), 2, aligned=True)
        assert (out[i] - ref[0]).abs().max().item() < 1e-4
    with pytest.raises(ValueError):
        MultiLevelBoxPooler(7, [1 / 4, 1 / 16])
