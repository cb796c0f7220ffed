"""DeepGUM (core.robust): EM on residuals with known inliers/outliers, the r-weighted loss, the training-loop state."""
from __future__ import annotations

import math

import pytest
import torch

from ebm_refine.core import (
    DeepGUM,
    GUMState,
    fit_gum,
    gum_responsibilities,
    iou_confidence_loss,
    ml_is_loss,
    nce_loss,
    weighted_mean,
)
from ebm_refine.core.robust import gum_log_densities


def synthetic_residuals(n: int, rho: float, inlier_std: torch.Tensor, half_range: float, seed: int):
    """n residuals: a share ``rho`` from N(0, diag(inlier_std^2)) (correlated by a fixed rotation in D > 1),
    the rest uniform on [-half_range, half_range]^D. Returns (residuals (n, D), outlier flags (n,))."""
    g = torch.Generator().manual_seed(seed)
    d = inlier_std.numel()
    is_out = torch.rand(n, generator=g) >= rho
    inl = torch.randn(n, d, generator=g, dtype=torch.float64) * inlier_std.double()
    if d > 1:  # a fixed rotation makes the covariance non-diagonal
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        inl = inl @ q.T
    out = (torch.rand(n, d, generator=g, dtype=torch.float64) * 2 - 1) * half_range
    return torch.where(is_out[:, None], out, inl).float(), is_out


def precision_recall(pred: torch.Tensor, true: torch.Tensor) -> tuple[float, float]:
    tp = (pred & true).sum().item()
    return tp / max(pred.sum().item(), 1), tp / max(true.sum().item(), 1)


@pytest.mark.parametrize("rho", [0.6, 0.8, 0.95])
def test_em_recovers_rho_and_flags_outliers_1d(rho: float) -> None:
    e, is_out = synthetic_residuals(4000, rho, torch.tensor([0.05]), half_range=4.0, seed=int(rho * 100))
    state, r = fit_gum(e)
    assert abs(state.rho - rho) < 0.05, state.rho
    # The inlier std is recovered (the r-weighted covariance is not inflated by the outliers).
    assert abs(math.sqrt(state.cov[0, 0].item()) / 0.05 - 1) < 0.1, state.cov
    # gamma = the residuals' range (8 here), so log U = -log 8 up to the sample's extremes.
    assert abs(state.log_uniform + math.log(8.0)) < 0.01
    precision, recall = precision_recall(r < 0.5, is_out)
    assert precision > 0.9 and recall > 0.9, (precision, recall)
    assert r.shape == (4000,) and r.dtype == torch.float32 and ((r >= 0) & (r <= 1)).all()


def test_em_recovers_rho_and_covariance_4d() -> None:
    std = torch.tensor([0.02, 0.05, 0.1, 0.2])
    e, is_out = synthetic_residuals(4000, 0.7, std, half_range=2.0, seed=7)
    state, r = fit_gum(e)
    assert abs(state.rho - 0.7) < 0.05, state.rho
    inl = e[~is_out].double()
    true_cov = inl.T @ inl / len(inl)
    eig = torch.linalg.eigvalsh(state.cov.double())
    # Same spectrum as the inliers' covariance (the rotation makes it non-diagonal) within 10 %.
    torch.testing.assert_close(eig, torch.linalg.eigvalsh(true_cov), rtol=0.1, atol=0.0)
    precision, recall = precision_recall(r < 0.5, is_out)
    assert precision > 0.9 and recall > 0.9, (precision, recall)


def test_responsibilities_follow_bayes_rule() -> None:
    state = GUMState(rho=0.8, cov=torch.tensor([[0.25]]), log_uniform=-math.log(10.0))
    e = torch.tensor([0.0, 0.5, 2.0])
    gauss = torch.exp(-0.5 * e**2 / 0.25) / math.sqrt(2 * math.pi * 0.25)
    expected = 0.8 * gauss / (0.8 * gauss + 0.2 / 10.0)
    torch.testing.assert_close(gum_responsibilities(e, state), expected)
    log_in, log_out = gum_log_densities(e, state)
    torch.testing.assert_close(log_in.exp().float(), 0.8 * gauss)
    torch.testing.assert_close(log_out.exp().float(), torch.full((3,), 0.02))


def test_warm_start_converges_faster_to_the_same_fit() -> None:
    e, _ = synthetic_residuals(3000, 0.75, torch.tensor([0.1, 0.1]), half_range=3.0, seed=3)
    full, r_full = fit_gum(e)
    warm, r_warm = fit_gum(e, init=full, max_iters=1)
    cold, _ = fit_gum(e, max_iters=1)
    assert abs(warm.rho - full.rho) < 1e-3
    torch.testing.assert_close(r_warm, r_full, atol=1e-3, rtol=0)
    torch.testing.assert_close(warm.cov, full.cov, rtol=1e-2, atol=0.0)
    # One EM step from the default start (the residuals' second moment) is far from converged.
    assert cold.cov[0, 0] > 5 * full.cov[0, 0]
    # A warm start of another dimension is ignored (falls back to the default start), not an error.
    other, _ = fit_gum(e[:, :1], init=full)
    assert other.dim == 1


def test_non_finite_residuals_get_zero_responsibility_and_do_not_affect_the_fit() -> None:
    e, _ = synthetic_residuals(2000, 0.8, torch.tensor([0.05]), half_range=4.0, seed=5)
    bad = e.clone()
    bad[[3, 10, 17]] = torch.tensor([[float("nan")], [float("inf")], [-float("inf")]])
    clean_state, _ = fit_gum(torch.cat([e[:3], e[4:10], e[11:17], e[18:]]))
    state, r = fit_gum(bad)
    assert (r[[3, 10, 17]] == 0).all() and torch.isfinite(r).all()
    assert abs(state.rho - clean_state.rho) < 1e-6
    assert (gum_responsibilities(bad, state)[[3, 10, 17]] == 0).all()


def test_bad_shapes_raise_value_error() -> None:
    state = GUMState(rho=0.9, cov=torch.eye(2), log_uniform=0.0)
    with pytest.raises(ValueError, match="residuals must be"):
        fit_gum(torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="at least 3 finite residuals"):
        fit_gum(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="dimension 3"):
        gum_responsibilities(torch.zeros(5, 3), state)
    with pytest.raises(ValueError, match="weights must have"):
        weighted_mean(torch.ones(4), torch.ones(4, 1))
    with pytest.raises(ValueError, match="per_sample losses must be"):
        weighted_mean(torch.ones(4, 2), None)
    with pytest.raises(ValueError, match="period"):
        DeepGUM(period=0)


def test_weighted_mean_reduces_to_the_losses_mean_when_r_is_one() -> None:
    g = torch.Generator().manual_seed(0)
    n, m = 6, 9
    f_ref, f_noise, log_q = torch.randn(n, generator=g), torch.randn(n, m, generator=g), torch.randn(n, m, generator=g)
    valid = torch.tensor([True, True, False, True, True, True])
    ones = torch.ones(n)
    per = ml_is_loss(f_ref, f_noise, log_q, valid, reduction="none")
    torch.testing.assert_close(weighted_mean(per, ones, valid), ml_is_loss(f_ref, f_noise, log_q, valid))
    torch.testing.assert_close(weighted_mean(per, None, valid), ml_is_loss(f_ref, f_noise, log_q, valid))
    per = nce_loss(f_ref, log_q[:, 0], f_noise, log_q, valid, reduction="none")
    torch.testing.assert_close(weighted_mean(per, ones, valid), nce_loss(f_ref, log_q[:, 0], f_noise, log_q, valid))
    # iou_confidence_loss's "mean" averages over samples: equal to the mean of per-row means when every row
    # has the same number of valid samples (no mask or an (N,) mask).
    pred, iou = torch.randn(n, m, generator=g), torch.rand(n, m, generator=g)
    per = iou_confidence_loss(pred, iou, valid, reduction="none")
    torch.testing.assert_close(weighted_mean(per, ones, valid), iou_confidence_loss(pred, iou, valid))


def test_weighted_mean_weights_are_constants_and_zero_weight_gives_zero_with_graph() -> None:
    losses = torch.tensor([1.0, 2.0, 10.0], requires_grad=True)
    r = torch.tensor([1.0, 0.5, 0.0], requires_grad=True)
    out = weighted_mean(losses, r)
    assert out.item() == pytest.approx((1.0 + 1.0) / 1.5)
    out.backward()
    torch.testing.assert_close(losses.grad, torch.tensor([1 / 1.5, 0.5 / 1.5, 0.0]))
    assert r.grad is None  # EM, not SGD, sets the weights
    zero = weighted_mean(losses, torch.zeros(3))
    assert zero.item() == 0.0 and zero.requires_grad


def test_deepgum_schedule_and_state_dict_round_trip() -> None:
    e, is_out = synthetic_residuals(1200, 0.7, torch.tensor([0.05]), half_range=4.0, seed=11)
    batches = e.split(100)  # 12 batches
    gum = DeepGUM(period=4, warmup=6)
    fitted_at = []
    for it, batch in enumerate(batches, start=1):
        w = gum.weights(batch)
        if not fitted_at:  # ones before the first fit
            assert torch.equal(w, torch.ones(100))
        gum.observe(batch)
        if gum.step():
            fitted_at.append(it)
    assert fitted_at == [6, 10]  # first at the end of the warmup, then every `period` iterations
    assert abs(gum.state.rho - 0.7) < 0.1
    r = gum.weights(e)
    precision, recall = precision_recall(r < 0.5, is_out)
    assert precision > 0.9 and recall > 0.9
    restored = DeepGUM(period=4, warmup=6)
    restored.load_state_dict(gum.state_dict())
    assert restored.iteration == 12 and restored.state.rho == gum.state.rho
    torch.testing.assert_close(restored.weights(e), r)
    empty = DeepGUM(period=1)
    empty.load_state_dict(DeepGUM(period=1).state_dict())
    assert empty.state is None and torch.equal(empty.weights(e[:5]), torch.ones(5))


def test_deepgum_keeps_only_the_most_recent_residuals() -> None:
    gum = DeepGUM(period=100, max_samples=250)
    for k in range(10):
        gum.observe(torch.full((100, 1), float(k)))
    kept = torch.cat(gum._buffer)
    assert 250 <= kept.shape[0] < 350 and kept.min().item() >= 7.0
