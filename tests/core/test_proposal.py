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


def test_weighted_mixture_with_means_matches_torch_distributions():
    sig = torch.tensor([[0.1, 0.2], [0.5, 0.3], [0.05, 0.05]])
    mu = torch.tensor([[0.0, 0.0], [1.0, -2.0], [-0.5, 0.25]])
    w = torch.tensor([2.0, 1.0, 1.0])
    prop = GaussianMixtureProposal(sig, means=mu, weights=w)
    centres = torch.randn(3, 2)
    y, log_q = prop.sample(centres, 40, generator=torch.Generator().manual_seed(0))
    for i in range(3):
        ref = MixtureSameFamily(Categorical(w / w.sum()), Independent(Normal(centres[i] + mu, sig), 1))
        torch.testing.assert_close(log_q[i], ref.log_prob(y[i]), atol=1e-5, rtol=1e-5)
    # Samples follow the weights: half of them from component 0 (around the centre, |offset| < 0.8 w.h.p.).
    many, _ = prop.sample(torch.zeros(1, 2), 40_000, generator=torch.Generator().manual_seed(1))
    near_second = ((many[0] - mu[1]).abs() < 1.5 * torch.tensor([0.5, 0.3]) * 3).all(1).float().mean().item()
    near_third = ((many[0] - mu[2]).abs() < 0.2).all(1).float().mean().item()
    assert near_second == pytest.approx(0.25, abs=0.01)
    assert near_third == pytest.approx(0.25, abs=0.01)
    with pytest.raises(ValueError, match="means"):
        GaussianMixtureProposal(sig, means=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixtureProposal(sig, weights=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="NCE"):
        prop.sample(centres, 4, beta=0.1)
    # Empty batches and zero samples, with weights too (multinomial refuses to draw nothing).
    weighted = GaussianMixtureProposal(sig, weights=w)
    assert weighted.sample(torch.zeros(0, 2), 4, beta=0.1)[0].shape == (0, 5, 2)
    assert weighted.sample(torch.zeros(3, 2), 0)[0].shape == (3, 0, 2)
    assert weighted.sample(torch.zeros(2, 2), 3, beta=0.5)[0].shape == (2, 4, 2)


def test_part_components_put_samples_on_the_halves_and_keep_log_q_exact():
    ref = torch.tensor([[10.0, 20.0, 50.0, 100.0]])
    paper = BoxProposal([0.05, 0.5])
    parts = BoxProposal([0.05, 0.5], part_weight=0.25, part_sigma=0.1)
    assert parts.mixture.num_components == 2 + 5
    g = torch.Generator().manual_seed(0)
    s = parts.sample(ref, 50_000, include_reference=True, generator=g)
    torch.testing.assert_close(parts.log_prob(s.boxes, ref), s.log_q, atol=1e-3, rtol=1e-4)
    s0 = paper.sample(ref, 50_000, generator=torch.Generator().manual_seed(0))
    upper = torch.tensor([0.0, -0.25, 0.0, math.log(0.5)])
    near = lambda rel: ((rel - upper).abs() < 0.1).all(-1).float().mean().item()  # noqa: E731
    # Each part component holds 5 % of the samples; 0.1 sigma puts ~0.68^4 ~ 21 % of those within 0.1: ~1 %.
    # The paper's proposal draws such a box about once in 10,000.
    assert near(s.rel[0, 1:]) == pytest.approx(0.05 * 0.683 ** 4, abs=0.003)
    assert near(s0.rel[0]) < 0.0005
    # The upper half of the reference box decodes to (10, 20, 50, 60): its top half, in pixels.
    torch.testing.assert_close(decode_relative(upper[None, None], ref[:, None])[0, 0],
                               torch.tensor([10.0, 20.0, 50.0, 60.0]))
    # Without parts the sampler draws exactly what it drew before part components existed (randint path).
    a = paper.sample(ref, 16, generator=torch.Generator().manual_seed(3)).rel
    b = GaussianMixtureProposal([[0.05] * 4, [0.5] * 4]).sample(torch.zeros(1, 4), 16,
                                                                 generator=torch.Generator().manual_seed(3))[0]
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="part_weight"):
        BoxProposal([0.1], part_weight=1.0)


def test_best_samples_picks_the_highest_valid_score_or_the_fallback():
    from ebm_refine.core import best_samples

    boxes = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]], requires_grad=True)
    valid = torch.tensor([[True, False, True], [False, False, False]])
    fallback = torch.full((2, 4), -1.0)
    best = best_samples(boxes, scores, valid, fallback)
    torch.testing.assert_close(best[0], boxes[0, 2])  # 0.9 is not valid: the best valid one is 0.5
    torch.testing.assert_close(best[1], fallback[1])  # no valid sample
    assert not best.requires_grad
