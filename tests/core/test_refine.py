import math

import pytest
import torch

from ebm_refine.core import box_iou_aligned, gradient_ascent, refine_boxes


def quadratic(target: torch.Tensor):
    return lambda y: -((y - target) ** 2).sum(-1)


def test_gradient_ascent_converges_and_never_decreases():
    target = torch.tensor([[1.0, -2.0], [0.5, 0.5]])
    res = gradient_ascent(quadratic(target), torch.zeros(2, 2), step_size=0.25, num_steps=20)
    torch.testing.assert_close(res.values, target, atol=1e-4, rtol=0)
    assert (res.scores >= res.initial_scores).all()
    assert res.num_accepted.tolist() == [20, 20]


def test_too_large_steps_are_rejected_and_decayed():
    # Step 10 overshoots a quadratic badly; backtracking halves it until steps are accepted.
    target = torch.tensor([[1.0]])
    res = gradient_ascent(quadratic(target), torch.zeros(1, 1), step_size=10.0, num_steps=10, decay=0.5)
    assert res.scores.item() > res.initial_scores.item()
    assert 0 < res.num_accepted.item() < 10
    # From y=0 (gradient 2) a step improves f only if lambda < 1: 10, 5, 2.5, 1.25 are rejected and
    # the fifth proposal, lambda = 0.625, lands at y = 1.25; the sixth keeps lambda: 1.25 - 0.625 * 0.5.
    five = gradient_ascent(quadratic(target), torch.zeros(1, 1), step_size=10.0, num_steps=5, decay=0.5)
    assert five.values.item() == pytest.approx(1.25) and five.num_accepted.item() == 1
    six = gradient_ascent(quadratic(target), torch.zeros(1, 1), step_size=10.0, num_steps=6, decay=0.5)
    assert six.values.item() == pytest.approx(0.9375)


def test_per_element_step_sizes_and_zero_inputs():
    res = gradient_ascent(quadratic(torch.zeros(0, 3)), torch.zeros(0, 3), step_size=0.1)
    assert res.values.shape == (0, 3) and res.scores.shape == (0,)
    steps = torch.tensor([[0.1, 0.0]])
    res = gradient_ascent(quadratic(torch.tensor([[1.0, 1.0]])), torch.zeros(1, 2), step_size=steps, num_steps=3)
    assert res.values[0, 1].item() == 0.0 and res.values[0, 0].item() > 0


def test_works_under_no_grad_and_returns_detached():
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    with torch.no_grad():
        res = gradient_ascent(lambda y: net(y)[:, 0], torch.randn(5, 2), step_size=0.05, num_steps=5)
    assert not res.values.requires_grad and not res.scores.requires_grad
    assert (res.scores >= res.initial_scores).all()


def test_non_finite_energy_or_gradient_leaves_point_unchanged():
    def energy(y):
        f = -(y**2).sum(-1)
        # Row 0: f is NaN; row 1: f finite but gradient infinite (sqrt at 0); row 2: fine.
        return torch.stack([f[0] * float("nan"), torch.sqrt(y[1, 0].abs()), f[2]])

    init = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    res = gradient_ascent(energy, init, step_size=0.1, num_steps=5)
    torch.testing.assert_close(res.values[:2], init[:2])
    assert res.values[2].abs().max() < 1.0


def test_rows_are_independent():
    target = torch.tensor([[1.0, 1.0], [3.0, -1.0], [-2.0, 0.0]])
    full = gradient_ascent(quadratic(target), torch.zeros(3, 2), step_size=0.3, num_steps=4)
    single = gradient_ascent(quadratic(target[1:2]), torch.zeros(1, 2), step_size=0.3, num_steps=4)
    torch.testing.assert_close(full.values[1:2], single.values)


def iou_energy(target: torch.Tensor):
    return lambda boxes: box_iou_aligned(boxes, target)


def test_refine_boxes_improves_iou_in_relative_space():
    target = torch.tensor([[50.0, 40.0, 150.0, 100.0], [5.0, 5.0, 15.0, 45.0]])
    init = torch.tensor([[58.0, 35.0, 160.0, 110.0], [6.0, 3.0, 17.0, 40.0]])
    res = refine_boxes(iou_energy(target), init, num_steps=50, step_size_center=0.05, step_size_size=0.05)
    before = box_iou_aligned(init, target)
    after = box_iou_aligned(res.boxes, target)
    assert (after > before + 0.05).all() and (after > 0.93).all()
    torch.testing.assert_close(res.scores, after)


def test_refine_boxes_scale_invariance():
    # The same configuration at 10x the pixel scale takes the same relative steps.
    target = torch.tensor([[50.0, 40.0, 150.0, 100.0]])
    init = torch.tensor([[58.0, 35.0, 160.0, 110.0]])
    a = refine_boxes(iou_energy(target), init, num_steps=5, step_size_center=0.02, step_size_size=0.02)
    b = refine_boxes(iou_energy(target * 10), init * 10, num_steps=5, step_size_center=0.02, step_size_size=0.02)
    torch.testing.assert_close(b.boxes, a.boxes * 10, rtol=1e-4, atol=1e-3)


def test_refine_boxes_degenerate_and_empty():
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).expand(3, 4)
    init = torch.tensor([[1.0, 1.0, 11.0, 11.0], [5.0, 5.0, 5.0, 9.0], [float("nan"), 0.0, 1.0, 1.0]])
    res = refine_boxes(iou_energy(target), init, num_steps=3, step_size_center=0.05, step_size_size=0.05)
    assert res.scores[0] > res.initial_scores[0]
    torch.testing.assert_close(res.boxes[1:], init[1:], equal_nan=True)
    assert res.scores[1:].tolist() == [-math.inf, -math.inf]
    empty = refine_boxes(iou_energy(target[:0]), torch.zeros(0, 4))
    assert empty.boxes.shape == (0, 4)


def test_refine_boxes_with_a_supplied_gradient_matches_autograd():
    # An energy that returns its own box-space gradient is chained to the relative space by hand; the
    # path must be the one autograd takes through the relative decoding.
    target = torch.tensor([[50.0, 40.0, 150.0, 100.0], [5.0, 5.0, 15.0, 45.0]], dtype=torch.float64)
    init = torch.tensor([[58.0, 35.0, 160.0, 110.0], [6.0, 3.0, 17.0, 40.0]], dtype=torch.float64)

    def energy(boxes):  # smooth, with a maximum at the target
        return -((boxes - target) ** 2).sum(1) / 100.0

    def energy_and_grad(boxes):
        return energy(boxes), -2.0 * (boxes - target) / 100.0

    kw = dict(num_steps=8, step_size_center=0.05, step_size_size=0.05)
    auto = refine_boxes(energy, init, **kw)
    given = refine_boxes(energy_and_grad, init, returns_grad=True, **kw)
    torch.testing.assert_close(given.boxes, auto.boxes)
    torch.testing.assert_close(given.scores, auto.scores)
    assert (given.scores / given.initial_scores < 0.1).all()  # squared error down more than 10x
    with pytest.raises(ValueError, match="shapes"):
        refine_boxes(lambda b: (energy(b), torch.zeros(2)), init, returns_grad=True)


def test_gradient_that_turns_non_finite_stops_the_point_after_its_last_good_step():
    target = torch.tensor([[1.0, 1.0], [1.0, 1.0]])

    def energy_and_grad(y):
        f = -((y - target) ** 2).sum(-1)
        g = -2.0 * (y - target)
        # Row 0: past y = 0.3 the gradient is NaN (the step there is still accepted); row 1 is fine.
        g = torch.where((y[:, :1] > 0.3) & (torch.arange(2)[:, None] == 0), float("nan"), g)
        return f, g

    res = gradient_ascent(energy_and_grad, torch.zeros(2, 2), step_size=0.25, num_steps=6, returns_grad=True)
    torch.testing.assert_close(res.values[0], torch.tensor([0.5, 0.5]))  # one step of 0.25 * 2, then stuck
    assert res.num_accepted.tolist() == [1, 6]
    torch.testing.assert_close(res.values[1], torch.tensor([1.0, 1.0]) - 0.5 ** 6, atol=1e-6, rtol=0)


def test_inactive_elements_are_evaluated_but_never_move():
    target = torch.tensor([[1.0, 1.0], [2.0, -1.0]])
    res = gradient_ascent(quadratic(target), torch.zeros(2, 2), step_size=0.25, num_steps=4,
                          active=torch.tensor([True, False]))
    assert res.values[1].tolist() == [0.0, 0.0] and res.num_accepted.tolist() == [4, 0]
    assert res.scores[1] == res.initial_scores[1]
