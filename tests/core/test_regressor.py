import subprocess
import sys

import pytest
import torch

from ebm_refine.core import EBMRegressor, GaussianMixtureProposal, mlp


def make_data(n: int, g: torch.Generator):
    x = torch.rand(n, 1, generator=g) * 4 - 2
    y = torch.cat([2 * x, -x], 1) + 0.05 * torch.randn(n, 2, generator=g)  # 2-D target
    return x, y


def test_ml_is_training_learns_a_2d_regression_and_prediction_refines():
    # Many tiny ops: one thread avoids oversubscription slow-downs when the CPU is shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_and_refine()
    finally:
        torch.set_num_threads(threads)


def _train_and_refine():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = EBMRegressor(mlp(1, [32], 32), 32, y_dim=2, hidden=32)
    prop = GaussianMixtureProposal([0.1, 0.8])
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x, y = make_data(512, g)
    for it in range(300):
        idx = torch.randint(0, 512, (64,), generator=g)
        loss = model.training_loss(x[idx], y[idx], prop, method="ml_is", num_samples=64, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt = make_data(64, g)
    init = yt + 0.3 * torch.randn(64, 2, generator=g)
    res = model.predict(xt, init, step_size=0.02, num_steps=30)
    err_before = (init - yt).norm(dim=1).mean()
    err_after = (res.values - yt).norm(dim=1).mean()
    assert err_after < 0.6 * err_before
    assert (res.scores >= res.initial_scores).all()


def test_all_methods_give_finite_losses_and_nan_targets_are_masked():
    model = EBMRegressor(mlp(1, [8], 8), 8, y_dim=1, hidden=8)
    prop = GaussianMixtureProposal([0.2, 1.6])
    x = torch.randn(6, 1)
    y = torch.randn(6, 1)
    y[2] = float("nan")
    for method in ("ml_is", "kld_is", "nce", "nce_plus"):
        loss = model.training_loss(x, y, prop, method=method, num_samples=16, beta=0.1, label_sigma=0.1)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_density_on_grid_is_normalised():
    model = EBMRegressor(mlp(1, [8], 8), 8, y_dim=1, hidden=8)
    grid = torch.linspace(-3, 3, 601)[:, None]
    logp = model.log_density_on_grid(torch.randn(4, 1), grid, cell_volume=0.01)
    torch.testing.assert_close(logp.exp().sum(1) * 0.01, torch.ones(4))


def test_core_imports_without_detectron2():
    code = "import sys, ebm_refine.core; assert 'detectron2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _weighted_setup():
    torch.manual_seed(0)
    model = EBMRegressor(mlp(1, [8], 8), 8, y_dim=2, hidden=8)
    prop = GaussianMixtureProposal([0.1, 0.8])
    g = torch.Generator().manual_seed(1)
    x, y = make_data(6, g)
    return model, prop, x, y


def _loss(model, prop, x, y, method, **kw):
    g = torch.Generator().manual_seed(5)  # the same proposal samples for every call
    return model.training_loss(x, y, prop, method=method, num_samples=16, beta=0.1, label_sigma=0.1,
                               generator=g, **kw)


def test_sample_weights_of_one_give_the_plain_loss_and_zero_weight_drops_a_target():
    model, prop, x, y = _weighted_setup()
    for method in ("ml_is", "kld_is", "nce", "nce_plus"):
        plain = _loss(model, prop, x, y, method)
        torch.testing.assert_close(_loss(model, prop, x, y, method, sample_weights=torch.ones(6)), plain)
        # Weights are normalised by their sum: a common factor changes nothing.
        torch.testing.assert_close(_loss(model, prop, x, y, method, sample_weights=torch.full((6,), 3.0)), plain)
        # Weight 0 on target 2 == target 2 masked as invalid (same proposal draws: masked rows are still sampled).
        w = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
        y_masked = y.clone()
        y_masked[2] = float("nan")
        torch.testing.assert_close(_loss(model, prop, x, y, method, sample_weights=w),
                                   _loss(model, prop, x, y_masked, method))


def test_sample_weights_scale_each_targets_gradient():
    model, prop, x, y = _weighted_setup()
    w = torch.tensor([0.5, 1.0, 0.0, 2.0, 1.0, 0.25])
    per_target = []
    for i in range(6):  # per-target losses with the same draws: weight 1 on target i only
        one_hot = torch.zeros(6)
        one_hot[i] = 1.0
        per_target.append(_loss(model, prop, x, y, "ml_is", sample_weights=one_hot))
    expected = (w * torch.stack(per_target)).sum() / w.sum()
    torch.testing.assert_close(_loss(model, prop, x, y, "ml_is", sample_weights=w), expected)


def test_sample_weights_of_the_wrong_shape_raise():
    model, prop, x, y = _weighted_setup()
    with pytest.raises(ValueError, match=r"sample_weights must be \(6,\)"):
        _loss(model, prop, x, y, "ml_is", sample_weights=torch.ones(6, 1))


def test_mode_on_grid_and_residuals_use_the_refined_prediction():
    model, _, x, y = _weighted_setup()
    grid = torch.stack(torch.meshgrid(torch.linspace(-4, 4, 9), torch.linspace(-2, 2, 5), indexing="ij"), -1)
    grid = grid.reshape(-1, 2)
    mode = model.mode_on_grid(x, grid, chunk=4)  # chunked over inputs
    f = model(x, grid[None].expand(6, -1, -1))
    torch.testing.assert_close(mode, grid[f.argmax(dim=1)])
    res = model.residuals(x, y, mode, step_size=0.05, num_steps=5)
    refined = model.predict(x, mode, step_size=0.05, num_steps=5).values
    torch.testing.assert_close(res, refined - y)
    assert not torch.equal(refined, mode)  # the refinement moved the guess
