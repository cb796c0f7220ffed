"""DeepGUM in the box estimator's training (the ``robust`` section): per-pair losses, residuals, EM state on resume."""
from __future__ import annotations

import json

import pytest
import torch

from ebm_refine.core.boxes import encode_relative
from ebm_refine.core.refine import refine_boxes
from ebm_refine.core.robust import weighted_mean
from ebm_refine.tracking.models import box_estimator
from ebm_refine.tracking.models.network import TrackerNet
from ebm_refine.tracking.train.loss import box_estimation_loss, pair_losses, refinement_residuals
from ebm_refine.tracking.train import train
from ebm_refine.utils.errors import UserError

from tracker_helpers import TINY_NET

SYN = {"height": 96, "width": 128, "num_frames": 8, "distractor_prob": 0.0}


def _cfg(iterations, robust=None):
    cfg = {
        "net": TINY_NET,
        "data": {"processing": {"output_size": 64, "max_gap": 5},
                 "sources": [{"type": "synthetic", "num_sequences": 20, "config": SYN}]},
        "train": {"batch_size": 3, "num_iterations": iterations, "num_workers": 0, "log_interval": 1,
                  "checkpoint_interval": 2, "lr": 1e-3, "seed": 3},
    }
    if robust is not None:
        cfg["robust"] = robust
    return cfg


def _pairs(method):
    torch.manual_seed(0)
    net = TrackerNet(dict(TINY_NET, loss=dict(TINY_NET["loss"], method=method))).eval()
    images = torch.rand(4, 3, 64, 64) * 255
    boxes = torch.tensor([[20.0, 22.0, 40.0, 38.0], [10.0, 12.0, 30.0, 44.0], [25.0, 25.0, 45.0, 35.0],
                          [30.0, 30.0, 30.5, 50.0]])  # the last one is degenerate: no signal
    feats = net.extract(images)
    return net, feats, boxes


@pytest.mark.parametrize("method", ["ml_is", "kld_is", "iou_confidence"])
def test_pair_losses_with_base_weights_give_the_batch_loss(method):
    net, feats, boxes = _pairs(method)
    cfg = net.config["loss"]
    ref = box_estimation_loss(net.estimator, feats, boxes, feats, boxes, cfg, torch.Generator().manual_seed(1))
    loss, weight, _ = pair_losses(net.estimator, feats, boxes, feats, boxes, cfg, torch.Generator().manual_seed(1))
    assert loss.shape == weight.shape == (4,)
    assert float(weight[3]) == 0.0 and bool((weight[:3] > 0).all())
    assert float(weighted_mean(loss, weight)) == pytest.approx(float(ref), rel=1e-5)


def test_residuals_are_the_trackers_refinement_of_the_annotation():
    net, feats, boxes = _pairs("ml_is")
    _, weight, features = pair_losses(net.estimator, feats, boxes, feats, boxes, net.config["loss"])
    e = refinement_residuals(net.estimator, features, boxes, 10, 2e-2, 1e-1, 0.5)
    assert e.shape == (4, 4) and bool(torch.isfinite(e[:3]).all())
    assert float(e[:3].abs().max()) > 1e-4  # the random estimator's f moves (some of) the boxes
    for i in range(3):  # the same boxes as the tracker's fused refiner, one image at a time
        one = box_estimator.TestFeatures(features.level3[i:i + 1].detach(), features.level4[i:i + 1].detach(), features.offset)
        res = refine_boxes(net.estimator.box_energy(one), boxes[i:i + 1], num_steps=10, step_size_center=2e-2,
                           step_size_size=1e-1, decay=0.5, returns_grad=True)
        assert torch.allclose(e[i], encode_relative(res.boxes, boxes[i:i + 1])[0], atol=1e-4), i
    # The residuals do not touch the parameters' gradients.
    assert all(p.grad is None for p in net.estimator.parameters())


def _estimator(path):
    return torch.load(path, weights_only=True)["net"]["estimator"]


def test_robust_before_warmup_trains_as_without(tmp_path):
    plain = train(_cfg(3), str(tmp_path / "plain"), log=lambda s: None)
    robust = train(_cfg(3, {"enabled": True, "warmup": 10}), str(tmp_path / "robust"), log=lambda s: None)
    assert robust["final_loss"] == pytest.approx(plain["final_loss"], rel=1e-5)
    a, b = _estimator(tmp_path / "plain" / "checkpoint.pth"), _estimator(tmp_path / "robust" / "checkpoint.pth")
    for k, v in a.items():
        assert torch.allclose(v.float(), b[k].float(), atol=1e-6), k
    logs = [json.loads(line) for line in open(tmp_path / "robust" / "log.jsonl")]
    assert [(r["rho"], r["mean_r"]) for r in logs] == [(1.0, 1.0)] * 3


def test_resume_continues_em_exactly(tmp_path):
    robust = {"enabled": True, "warmup": 1, "period": 1, "step_size_center": 2e-2, "step_size_size": 1e-1}
    straight = train(_cfg(4, robust), str(tmp_path / "a"), log=lambda s: None)
    train(_cfg(2, robust), str(tmp_path / "b"), log=lambda s: None)
    resumed = train(_cfg(4, robust), str(tmp_path / "b"), log=lambda s: None)
    assert resumed["start_iteration"] == 2
    a = torch.load(tmp_path / "a" / "checkpoint.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pth", weights_only=True)
    assert a["robust"]["iteration"] == b["robust"]["iteration"] == 4
    assert a["robust"]["state"]["rho"] == pytest.approx(b["robust"]["state"]["rho"], abs=1e-6)
    assert torch.allclose(a["robust"]["state"]["cov"], b["robust"]["state"]["cov"], rtol=1e-4, atol=1e-9)
    for k, v in a["net"]["estimator"].items():
        assert torch.allclose(v.float(), b["net"]["estimator"][k].float(), atol=1e-6), k
    logs = [json.loads(line) for line in open(tmp_path / "b" / "log.jsonl")]
    # EM needs 5 residuals (4-D): the first fit is at iteration 2 (6 pairs); r = 1 until it is used.
    assert [r["rho"] == 1.0 for r in logs] == [True, False, False, False]
    assert logs[0]["mean_r"] == logs[1]["mean_r"] == 1.0 and logs[2]["mean_r"] < 1.0
    assert straight["final_loss"] == pytest.approx(resumed["final_loss"], rel=1e-5)


@pytest.mark.parametrize("robust, message", [
    ({"enabled": True, "period": 0}, "robust.period: 0 must be a whole number >= 1"),
    ({"enabled": "yes"}, "robust.enabled: 'yes' must be true or false"),
    ({"step_size_size": -1e-3}, r"robust.step_size_size: -0.001 must be a number > 0"),
    ({"decay": 1.5}, r"robust.decay: 1.5 must be in \(0, 1\]"),
    ({"peroid": 3}, "robust.peroid"),
])
def test_robust_config_errors(tmp_path, robust, message):
    with pytest.raises(UserError, match=message):
        train(_cfg(1, robust), str(tmp_path), log=lambda s: None)


def test_annotation_noise_gives_the_same_wrong_box_per_frame_and_leaves_clean_pairs_alone():
    from ebm_refine.data.annotation_noise import AnnotationNoise
    from ebm_refine.data.synthetic_tracking import SyntheticConfig, SyntheticDataset
    from ebm_refine.tracking.train import PairDataset

    src = [(SyntheticDataset(6, 0, SyntheticConfig(**SYN)), 1.0)]
    proc = {"output_size": 64, "max_gap": 5, "center_jitter": 0.0, "scale_jitter": 0.0}
    clean = PairDataset(src, proc, seed=1)
    noisy = PairDataset(src, proc, seed=1, annotation_noise=AnnotationNoise(0.5, "shift", seed=0))
    flags = []
    for i in range(40):
        a, b = clean[i], noisy[i]
        flags.append(bool(b["test_outlier"]))
        assert not bool(a["test_outlier"]) and not bool(a["ref_outlier"])
        if not bool(b["test_outlier"]) and not bool(b["ref_outlier"]):
            # Noise has its own random stream: a clean pair is exactly the pair of the noise-free run.
            for k in ("ref_image", "ref_box", "test_image", "test_box"):
                assert torch.equal(a[k], b[k]), k
        elif bool(b["test_outlier"]):
            # Without jitter the crop is centred on the (shifted) box: about where the box sat, on other pixels.
            assert torch.allclose(a["test_box"], b["test_box"], atol=1.0)
            assert not torch.equal(a["test_image"], b["test_image"])
    assert 0.3 < sum(flags) / len(flags) < 0.7
    # The wrong box is the frame's, whichever pair draws the frame: the dataset-level box is reproducible.
    noise = AnnotationNoise(0.5, "shift", seed=0)
    seq = src[0][0][2]
    box = seq.boxes[3]
    xyxy = [box[0], box[1], box[0] + box[2], box[1] + box[3]]
    assert noisy._box("0/2", 3, box, seq.frame(3))[1] == noise("0/2", 3, xyxy, 128, 96)[1]


def test_training_with_noise_logs_what_deepgum_makes_of_the_altered_boxes(tmp_path):
    cfg = _cfg(4, {"enabled": True, "warmup": 1, "period": 1, "step_size_center": 2e-2, "step_size_size": 1e-1})
    cfg["data"]["annotation_noise"] = {"fraction": 0.4, "kind": "shift_scale", "seed": 0}
    train(cfg, str(tmp_path), log=lambda s: None)
    logs = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert "outlier_recall" not in logs[0]  # before the first fit every r is 1: nothing to report
    later = [r for r in logs if "outlier_recall" in r]
    assert len(later) >= 2
    for r in later:
        assert set(r) >= {"mean_r_outliers", "mean_r_clean", "outlier_precision", "outlier_recall"}
        for k in ("mean_r_outliers", "mean_r_clean"):
            assert r[k] is None or 0.0 <= r[k] <= 1.0


@pytest.mark.parametrize("noise, message", [
    ({"fraction": 1.0}, r"data\.annotation_noise\.fraction: 1\.0 must be a number in \[0, 1\)"),
    ({"kind": "swap"}, r"data\.annotation_noise\.kind: 'swap' unknown; use one of random, shift"),
    ({"frac": 0.2}, r"data\.annotation_noise\.frac"),
])
def test_annotation_noise_config_errors(tmp_path, noise, message):
    cfg = _cfg(1)
    cfg["data"]["annotation_noise"] = noise
    with pytest.raises(UserError, match=message):
        train(cfg, str(tmp_path), log=lambda s: None)


def test_best_sample_residual_starts_at_the_highest_scoring_proposal():
    net, feats, boxes = _pairs("ml_is")
    cfg = dict(net.config["loss"], num_samples=16)
    loss, weight, features, best = pair_losses(net.estimator, feats, boxes, feats, boxes, cfg,
                                               torch.Generator().manual_seed(2), return_best=True)
    # The best box is one of the pair's valid proposals, the one with the highest f.
    from ebm_refine.core.proposal import BoxProposal
    from ebm_refine.core.boxes import valid_box_mask
    s = BoxProposal(cfg["sigmas"]).sample(boxes, 16, include_reference=True, generator=torch.Generator().manual_seed(2))
    scores = net.estimator.score(features, s.boxes).detach()
    ok = valid_box_mask(s.boxes) & (weight > 0)[:, None]
    for i in range(3):
        j = int(torch.where(ok[i], scores[i], torch.tensor(float("-inf"))).argmax())
        torch.testing.assert_close(best[i], s.boxes[i, j])
    torch.testing.assert_close(best[3], boxes[3])  # no valid sample: the annotation
    # Refinement from there, encoded relative to the annotation: not the annotation's own residual.
    e_ann = refinement_residuals(net.estimator, features, boxes, 3, 2e-2, 1e-1)
    e_best = refinement_residuals(net.estimator, features, boxes, 3, 2e-2, 1e-1, start=best)
    ref = refine_boxes(lambda b: net.estimator.score(features, b[:, None, :])[:, 0], best, num_steps=3,
                       step_size_center=2e-2, step_size_size=1e-1, decay=0.5)
    torch.testing.assert_close(e_best, encode_relative(ref.boxes, boxes), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(e_ann[:3], e_best[:3])


def test_residual_start_is_checked(tmp_path):
    with pytest.raises(UserError, match=r"robust.residual_start: 'prediction' unknown; use one of annotation, best_sample"):
        train(_cfg(1, {"residual_start": "prediction"}), str(tmp_path), log=lambda s: None)
