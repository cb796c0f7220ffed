"""The detector-aware proposal: residuals of detections, the EM fit, and the exact density it adds to q."""
import json
import math

import pytest
import torch

from ebm_refine.core import BoxProposal, ResidualMixture, detection_residuals, encode_relative, fit_residual_mixture


def _two_component_residuals(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    first = torch.rand(n, generator=g) < 0.3
    tight = torch.randn(n, 4, generator=g) * 0.02 + torch.tensor([0.0, 0.05, 0.1, 0.1])
    broad = torch.randn(n, 4, generator=g) * 0.1
    return torch.where(first[:, None], tight, broad)


def test_fit_recovers_a_known_mixture():
    m = fit_residual_mixture(_two_component_residuals(), 2)
    k = int(m.weights.argmin())  # the 30 % component
    assert m.weights[k] == pytest.approx(0.3, abs=0.03)
    assert torch.allclose(m.means[k], torch.tensor([0.0, 0.05, 0.1, 0.1]), atol=0.01)
    assert torch.allclose(m.sigmas[k], torch.full((4,), 0.02), atol=0.005)
    assert torch.allclose(m.sigmas[1 - k], torch.full((4,), 0.1), atol=0.01)
    assert m.num_residuals == 4000


def test_the_variance_floor_holds_on_identical_residuals():
    res = torch.cat([torch.zeros(50, 4), torch.randn(50, 4, generator=torch.Generator().manual_seed(1)) * 0.2])
    m = fit_residual_mixture(res, 3, min_sigma=0.01)
    assert float(m.sigmas.min()) >= 0.01 - 1e-7


def test_proposal_with_residual_components_has_a_normalised_exact_density():
    m = fit_residual_mixture(_two_component_residuals(), 2)
    p = BoxProposal([0.0375, 0.075, 0.15], residual_mixture=m, residual_weight=0.5)
    g = torch.Generator().manual_seed(3)
    sd = 0.4  # importance-sample the integral of q with a broad Gaussian
    u = torch.randn(400000, 4, generator=g) * sd
    log_n = (-0.5 * (u / sd) ** 2).sum(-1) - 4 * math.log(sd) - 2 * math.log(2 * math.pi)
    log_q = p.mixture.log_prob(u[None], torch.zeros(1, 4))[0]
    assert float(torch.exp(log_q - log_n).mean()) == pytest.approx(1.0, abs=0.03)
    # log q of sampled boxes equals the mixture's own density of their relative coordinates
    ref = torch.tensor([[10.0, 20.0, 110.0, 70.0]])
    s = p.sample(ref, 20000, include_reference=True, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(s.log_q, p.log_prob(s.boxes, ref), atol=1e-3)
    # half of the samples come from the fitted components, 30 % of those from the tight one at (0, .05, .1, .1):
    # 0.15 x P(|z| < 2 sigma)^4 = 0.15 x 0.83 = 0.124 of all samples within 0.04 of its mean, plus a little spill
    near = ((s.rel[0, 1:] - torch.tensor([0.0, 0.05, 0.1, 0.1])).abs() < 0.04).all(-1).float().mean()
    assert 0.115 < float(near) < 0.14


def test_mixture_round_trips_through_json_and_refuses_other_files(tmp_path):
    m = fit_residual_mixture(_two_component_residuals(), 2, source="test")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(m.to_dict()))
    back = ResidualMixture.load(str(path))
    assert torch.equal(back.means, m.means) and torch.equal(back.sigmas, m.sigmas) and back.source == "test"
    (tmp_path / "bad.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="bad.json: not a residual-mixture file"):
        ResidualMixture.load(str(tmp_path / "bad.json"))
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="bin.json: not a JSON"):
        ResidualMixture.load(str(tmp_path / "bin.json"))
    with pytest.raises(ValueError, match="positive"):
        ResidualMixture([[0.0] * 4], [[0.0] * 4], [1.0])


def test_detection_residuals_match_by_class_and_iou():
    gt = torch.tensor([[0.0, 0.0, 100.0, 100.0], [200.0, 200.0, 300.0, 260.0]])
    dets = torch.tensor([[5.0, 0.0, 105.0, 100.0],      # gt 0, same class: residual (0.05, 0, 0, 0)
                         [200.0, 200.0, 300.0, 260.0],  # gt 1 but another class: not matched
                         [0.0, 0.0, 30.0, 30.0]])       # IoU 0.09 with gt 0: not matched
    res = detection_residuals(dets, torch.tensor([0, 0, 0]), gt, torch.tensor([0, 1]), 0.5)
    assert torch.allclose(res, torch.tensor([[0.05, 0.0, 0.0, 0.0]]), atol=1e-6)
    agnostic = detection_residuals(dets, None, gt, None, 0.5)
    assert agnostic.shape == (2, 4) and torch.allclose(agnostic[1], encode_relative(gt[1], gt[1]))


def test_proposal_rejects_inconsistent_residual_settings():
    m = fit_residual_mixture(_two_component_residuals(), 2)
    with pytest.raises(ValueError, match="needs a residual_mixture"):
        BoxProposal([0.1], residual_weight=0.5)
    with pytest.raises(ValueError, match="below 1"):
        BoxProposal([0.1], part_weight=0.5, residual_mixture=m, residual_weight=0.5)
    plain = BoxProposal([0.0375, 0.075, 0.15])
    assert plain.mixture.means is None  # the paper's proposal is unchanged
