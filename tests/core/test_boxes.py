import pytest
import torch
import torchvision

from ebm_refine.core import boxes as B


def test_conversions_round_trip_and_values():
    xyxy = torch.tensor([[10.0, 20.0, 50.0, 80.0]])
    assert B.xyxy_to_xywh(xyxy).tolist() == [[10.0, 20.0, 40.0, 60.0]]
    assert B.xyxy_to_cxcywh(xyxy).tolist() == [[30.0, 50.0, 40.0, 60.0]]
    r = torch.rand(3, 5, 4) * 100
    r[..., 2:] += r[..., :2]
    torch.testing.assert_close(B.xywh_to_xyxy(B.xyxy_to_xywh(r)), r)
    torch.testing.assert_close(B.cxcywh_to_xyxy(B.xyxy_to_cxcywh(r)), r)


def test_relative_encoding_values_and_inverse():
    ref = torch.tensor([[0.0, 0.0, 100.0, 50.0]])
    box = torch.tensor([[10.0, 5.0, 130.0, 30.0]])  # centre (70, 17.5), size 120 x 25
    u = B.encode_relative(box, ref)
    expected = torch.tensor([[(70 - 50) / 100, (17.5 - 25) / 50, torch.log(torch.tensor(1.2)), torch.log(torch.tensor(0.5))]])
    torch.testing.assert_close(u, expected)
    torch.testing.assert_close(B.decode_relative(u, ref), box)
    # Broadcast: (N, 1, 4) references against (N, M, 4) boxes.
    refs = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 45.0]])
    rel = torch.randn(2, 7, 4) * 0.3
    boxes = B.decode_relative(rel, refs[:, None])
    assert boxes.shape == (2, 7, 4)
    torch.testing.assert_close(B.encode_relative(boxes, refs[:, None]), rel, atol=1e-5, rtol=1e-5)


def test_relative_encoding_of_degenerate_box_is_finite():
    u = B.encode_relative(torch.tensor([[5.0, 5.0, 5.0, 9.0]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    assert torch.isfinite(u).all() and u[0, 2] < -10


def test_iou_matches_torchvision_and_handles_empty():
    a = torch.rand(6, 4) * 50
    a[:, 2:] += a[:, :2] + 1
    b = torch.rand(4, 4) * 50
    b[:, 2:] += b[:, :2] + 1
    torch.testing.assert_close(B.box_iou_matrix(a, b), torchvision.ops.box_iou(a, b))
    assert B.box_iou_aligned(torch.tensor([0.0, 0, 10, 10]), torch.tensor([5.0, 0, 15, 10])).item() == pytest.approx(1 / 3)
    assert B.box_iou_aligned(torch.tensor([0.0, 0, 0, 0]), torch.tensor([0.0, 0, 0, 0])).item() == 0.0


def test_valid_mask_and_clip():
    boxes = torch.tensor([[0.0, 0, 10, 10], [5.0, 5, 5, 10], [float("nan"), 0, 1, 1], [0, 0, -1, 3]])
    assert B.valid_box_mask(boxes).tolist() == [True, False, False, False]
    assert B.clip_boxes(torch.tensor([[-5.0, -3, 120, 60]]), height=50, width=100).tolist() == [[0, 0, 100, 50]]
