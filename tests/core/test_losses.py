import math

import pytest
import torch

from ebm_refine.core import (
    GaussianMixtureProposal,
    BoxProposal,
    ebm_loss,
    gaussian_label_log_density,
    iou_confidence_loss,
    kld_is_loss,
    ml_is_loss,
    nce_loss,
    sampling_options,
)


def test_ml_is_formula_on_numbers():
    f_ref = torch.tensor([1.0])
    f_noise = torch.tensor([[0.0, 2.0]])
    log_q = torch.tensor([[-1.0, 0.5]])
    expected = math.log(0.5 * (math.exp(1.0) + math.exp(1.5))) - 1.0
    assert ml_is_loss(f_ref, f_noise, log_q).item() == pytest.approx(expected, rel=1e-6)


def test_ml_is_is_stable_for_huge_scores():
    f_noise = torch.tensor([[1000.0, 1001.0]])
    loss = ml_is_loss(torch.tensor([1000.0]), f_noise, torch.zeros(1, 2))
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(math.log(0.5 * (1 + math.e)), abs=2e-4)  # float32 at 1e3


def test_ml_is_estimates_true_nll_for_a_gaussian_model():
    # f(y) = -y^2 / (2 s^2) with s = 0.3: Z = sqrt(2 pi) s, NLL(y=0) = log Z. Wide proposal -> estimate is close.
    s = 0.3
    g = torch.Generator().manual_seed(0)
    prop = GaussianMixtureProposal([0.2, 1.6])
    y, log_q = prop.sample(torch.zeros(1, 1), 200_000, include_center=True, generator=g)
    f = -(y[..., 0] ** 2) / (2 * s * s)
    loss = ml_is_loss(f[:, 0], f[:, 1:], log_q[:, 1:])
    assert loss.item() == pytest.approx(math.log(math.sqrt(2 * math.pi) * s), abs=0.01)


def test_masks_drop_rows_and_samples():
    f_ref = torch.tensor([0.0, 5.0])
    f_noise = torch.tensor([[0.0, 1.0, 100.0], [0.0, 0.0, 0.0]])
    log_q = torch.zeros(2, 3)
    # Sample mask: the 100.0 sample is excluded; row 1 is excluded by the row mask in the second call.
    mask = torch.tensor([[True, True, False], [True, True, True]])
    per_row = ml_is_loss(f_ref, f_noise, log_q, valid=mask, reduction="none")
    assert per_row[0].item() == pytest.approx(math.log(0.5 * (1 + math.e)))
    assert ml_is_loss(f_ref, f_noise, log_q, valid=torch.tensor([True, False])).item() == pytest.approx(
        math.log((1 + math.e + math.exp(100)) / 3), rel=1e-6
    )


def test_all_invalid_gives_zero_with_graph():
    f = torch.randn(3, 4, requires_grad=True)
    loss = ml_is_loss(f[:, 0], f, torch.zeros(3, 4), valid=torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert f.grad is not None and (f.grad == 0).all()
    empty = ml_is_loss(torch.zeros(0), torch.zeros(0, 4), torch.zeros(0, 4))
    assert empty.item() == 0.0


def test_nce_is_cross_entropy_of_true_sample():
    f_true, lq_true = torch.tensor([2.0]), torch.tensor([0.5])
    f_noise, lq_noise = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.0, -2.0]])
    logits = torch.tensor([[1.5, 1.0, 1.0]])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0]))
    assert nce_loss(f_true, lq_true, f_noise, lq_noise).item() == pytest.approx(expected.item(), rel=1e-6)


def test_kld_is_formula():
    f = torch.tensor([[1.0, 2.0]])
    lq = torch.tensor([[0.0, -1.0]])
    lp = torch.tensor([[-0.5, -3.0]])
    log_z = math.log(0.5 * (math.exp(1.0) + math.exp(3.0)))
    expected = log_z - 0.5 * (math.exp(-0.5) * 1.0 + math.exp(-2.0) * 2.0)
    assert kld_is_loss(f, lq, lp).item() == pytest.approx(expected, rel=1e-6)


def test_gaussian_label_density():
    u = torch.tensor([[[0.0, 0.0], [0.1, -0.2]]])
    out = gaussian_label_log_density(u, 0.1)
    assert out[0, 0].item() == pytest.approx(-2 * math.log(0.1) - math.log(2 * math.pi))
    assert out[0, 1].item() == pytest.approx(out[0, 0].item() - 0.5 * (1 + 4))


def test_iou_confidence_loss_target_is_2iou_minus_1():
    iou = torch.tensor([[1.0, 0.5, 0.0]])
    assert iou_confidence_loss(2 * iou - 1, iou).item() == 0.0
    pred = torch.tensor([[1.0, 0.0, 0.0]])  # errors 0, 0, 1 -> smooth-L1 with beta 1/9: 0, 0, 1 - 1/18
    assert iou_confidence_loss(pred, iou).item() == pytest.approx((1 - 1 / 18) / 3)


@pytest.mark.parametrize("method", ["ml_is", "kld_is", "nce", "nce_plus"])
def test_every_method_decreases_when_the_model_prefers_the_truth(method):
    # A good energy peaks at the ground truth; a flat one does not. Loss must be lower for the good one.
    g = torch.Generator().manual_seed(0)
    opts = sampling_options(method, beta=0.1)
    prop = BoxProposal([0.05, 0.2])
    refs = torch.tensor([[10.0, 10.0, 60.0, 40.0]]).repeat(64, 1)
    s = prop.sample(refs, 128, include_reference=opts.include_center, beta=opts.beta, generator=g)
    good = -(s.rel**2).sum(-1) / (2 * 0.05**2)
    flat = torch.zeros_like(good)
    kw = dict(offsets=s.rel, label_sigma=0.05)
    assert ebm_loss(method, good, s.log_q, **kw) < ebm_loss(method, flat, s.log_q, **kw) - 0.5


def test_unknown_method():
    with pytest.raises(ValueError):
        sampling_options("mle")
    with pytest.raises(ValueError):
        sampling_options("nce_plus")  # no beta
