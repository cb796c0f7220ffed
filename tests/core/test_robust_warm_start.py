"""core.robust.fit_gum: a stale warm start (residuals grew since the last fit) does not collapse EM."""
import torch

from ebm_refine.core.robust import DeepGUM, fit_gum


def test_warm_start_from_much_smaller_residuals_falls_back_to_a_cold_start():
    torch.manual_seed(0)
    early, _ = fit_gum(torch.randn(40, 4) * 1e-4)  # an untrained network barely moves the boxes
    grown = torch.cat([torch.randn(90, 4) * 0.05, torch.rand(10, 4) * 2 - 1])  # later: larger, 10 % outliers
    cold, r_cold = fit_gum(grown)
    warm, r_warm = fit_gum(grown, init=early)
    # Without the fallback, EM from `early` ends at rho = 1e-6 with every r = 0 (a zero training loss).
    assert abs(warm.rho - cold.rho) < 1e-6 and torch.allclose(r_warm, r_cold)
    assert 0.8 < warm.rho < 0.95 and float(r_warm[:90].mean()) > 0.8 and float(r_warm[90:].max()) < 0.5


def test_deepgum_keeps_fitting_while_the_residual_scale_grows():
    gum = DeepGUM(period=1)
    torch.manual_seed(1)
    for scale in (1e-4, 1e-3, 1e-2, 1e-1):
        gum.observe(torch.randn(50, 4) * scale)
        assert gum.step()
        # No collapse (rho = 1e-6, r = 0): fresh residuals of the same scale are mostly inliers. (A GUM fitted to
        # 50 pure-Gaussian 4-D residuals calls some of their tails outliers: rho ~ 0.6-0.7 here.)
        assert gum.state.rho > 0.5
        assert float(gum.weights(torch.randn(20, 4) * scale).mean()) > 0.3
