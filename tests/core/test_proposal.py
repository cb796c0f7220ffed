import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from ebm_refine.core import BoxProposal, GaussianMixtureProposal, decode_relative, encode_relative


def torch_mixture(centre: torch.Tensor, sigmas: torch.Tensor) -> MixtureSameFamily:
    k = sigmas.shape[0]
    comp = Independent(Normal(centre.expand(k, -1), sigmas), 1)
    return MixtureSameFamily(Categorical(torch.ones(k)), comp)


def test_log_prob_is_exact_mixture_density():
    sig = torch.tensor([[0.1, 0.2, 0.3], [1.0, 0.5, 2.0]])
    prop = GaussianMixtureProposal(sig)
    centres = torch.randn(4, 3)
    y = torch.randn(4, 9, 3)
    ours = prop.log_prob(y, centres)
    for i in range(4):
        torch.testing.assert_close(ours[i], torch_mixture(centres[i], sig).log_prob(y[i]), atol=1e-5, rtol=1e-5)


def test_box_proposal_log_q_matches_torch_distributions():
    prop = BoxProposal([0.0375, 0.075, 0.15])
    refs = torch.tensor([[10.0, 20.0, 110.0, 70.0], [0.0, 0.0, 8.0, 30.0]])
    s = prop.sample(refs, 50)
    assert s.boxes.shape == (2, 50, 4) and s.rel.shape == (2, 50, 4) and s.log_q.shape == (2, 50)
    sig = torch.tensor([[v] * 4 for v in (0.0375, 0.075, 0.15)])
    for i in range(2):
        torch.testing.assert_close(s.log_q[i], torch_mixture(torch.zeros(4), sig).log_prob(s.rel[i]), atol=1e-4, rtol=1e-5)
    # rel and boxes describe the same samples.
    torch.testing.assert_close(encode_relative(s.boxes, refs[:, None]), s.rel, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(prop.log_prob(s.boxes, refs), s.log_q, atol=1e-3, rtol=1e-4)


def test_sample_statistics_match_the_mixture():
    g = torch.Generator().manual_seed(0)
    prop = GaussianMixtureProposal([[0.05], [0.5]])
    y, _ = prop.sample(torch.zeros(1, 1), 200_000, generator=g)
    # Var of an equal mixture of N(0, a^2), N(0, b^2) is (a^2 + b^2) / 2; mean 0.
    assert y.mean().abs().item() < 0.005
    assert y.var().item() == pytest.approx((0.05**2 + 0.5**2) / 2, rel=0.02)
    # Half of the samples come from the narrow component: P(|y| < 0.1) = 0.5*P(|z|<2) + 0.5*P(|z|<0.2).
    p = 0.5 * math.erf(2 / math.sqrt(2)) + 0.5 * math.erf(0.2 / math.sqrt(2))
    assert (y.abs() < 0.1).float().mean().item() == pytest.approx(p, abs=0.005)


def test_positive_options():
    refs = torch.tensor([[10.0, 10.0, 50.0, 90.0]])
    prop = BoxProposal([0.1, 0.8])
    s = prop.sample(refs, 8, include_reference=True)
    assert s.boxes.shape == (1, 9, 4)
    torch.testing.assert_close(s.boxes[:, 0], refs)
    assert s.positive.boxes.shape == (1, 1, 4) and s.noise.boxes.shape == (1, 8, 4)
    # NCE+: the true sample is close to the reference (beta-scaled), but its log q is under the unscaled q.
    g = torch.Generator().manual_seed(1)
    many = refs.expand(5000, 4)
    s = prop.sample(many, 1, beta=0.025, generator=g)
    true_rel = s.rel[:, 0]
    assert true_rel.abs().max().item() < 0.025 * 0.8 * 6
    expected = prop.mixture.log_prob(true_rel[:, None], torch.zeros(5000, 4))[:, 0]
    torch.testing.assert_close(s.log_q[:, 0], expected)
    with pytest.raises(ValueError):
        prop.sample(refs, 4, include_reference=True, beta=0.1)


def test_seeded_sampling_is_reproducible_and_keeps_dtype():
    refs = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64)
    a = BoxProposal([0.1]).sample(refs, 16, generator=torch.Generator().manual_seed(3))
    b = BoxProposal([0.1]).sample(refs, 16, generator=torch.Generator().manual_seed(3))
    assert a.boxes.dtype == torch.float64
    torch.testing.assert_close(a.boxes, b.boxes)


def test_zero_references_and_bad_sigmas():
    s = BoxProposal([0.1, 0.2]).sample(torch.zeros(0, 4), 128, include_reference=True)
    assert s.boxes.shape == (0, 129, 4) and s.log_q.shape == (0, 129)
    with pytest.raises(ValueError):
        BoxProposal([0.1, -0.2])
    with pytest.raises(ValueError):
        BoxProposal([0.1, 0.2], sigma_size=[0.1])
    with pytest.raises(ValueError):
        BoxProposal([0.1]).sample(torch.zeros(3, 5), 4)


def test_samples_decode_to_valid_boxes():
    refs = torch.tensor([[100.0, 100.0, 140.0, 300.0]])
    s = BoxProposal([0.5]).sample(refs, 1000)
    assert (s.boxes[..., 2] > s.boxes[..., 0]).all() and (s.boxes[..., 3] > s.boxes[..., 1]).all()
    torch.testing.assert_close(decode_relative(s.rel, refs[:, None]), s.boxes)
