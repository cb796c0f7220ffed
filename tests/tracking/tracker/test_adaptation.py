"""First-frame adaptation of the box estimator's modulation (tracker/adaptation.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ebm_refine.core.objectives import ebm_loss
from ebm_refine.core.proposal import BoxProposal
from ebm_refine.tracking.models import TrackerNet
from ebm_refine.tracking.models.box_estimator import TestFeatures
from ebm_refine.tracking.tracker import EBMAtomTracker, load_tracker_params
from ebm_refine.tracking.tracker.adaptation import adapt_modulation, adaptation_views
from ebm_refine.utils.config import merge_params

from tracker_helpers import TINY_NET, TINY_TRACKER, fit_tiny_estimator, one_torch_thread


def _params(**adaptation):
    return load_tracker_params(None, merge_params(TINY_TRACKER, {"box_refinement": {"adaptation": adaptation}},
                                                  strict=False))


def _views(net, seq, params):
    """The adaptation views of the sequence's first frame: backbone maps and (V, 4) xyxy boxes."""
    from ebm_refine.tracking.processing import image_to_tensor, sample_patch, search_region_side

    x, y, w, h = seq.boxes[0]
    cfg = params["box_refinement"]["adaptation"]
    crops, boxes = [], []
    for zoom, dx, dy in adaptation_views(cfg["zooms"], cfg["offsets"]):
        side = search_region_side(w, h, params["search_area_factor"]) * zoom
        crop, tf = sample_patch(seq.frame(0), (x + w / 2 + dx * w, y + h / 2 + dy * h), side,
                                params["image_sample_size"])
        crops.append(crop)
        boxes.append(tf.boxes_to_crop(np.array([x, y, x + w, y + h])))
    with torch.no_grad():
        feats = net.backbone(image_to_tensor(np.stack(crops)))
    return feats, torch.tensor(np.stack(boxes), dtype=torch.float32)


def _loss(net, feats, boxes, modulation, seed):
    """ML-IS loss of the views' boxes under ``modulation`` on a fresh proposal sample (not the adaptation's)."""
    gen = torch.Generator().manual_seed(seed)
    samples = BoxProposal([0.05, 0.5]).sample(boxes, 128, include_reference=True, generator=gen)
    with torch.no_grad():
        scores = net.estimator.score(net.estimator.test_features(feats, modulation), samples.boxes)
    return float(ebm_loss("ml_is", scores, samples.log_q))


def test_pooling_commutes_with_the_modulation(tiny_net):
    """What adaptation relies on: pool(maps) x modulation per channel == pool(maps x modulation)."""
    torch.manual_seed(0)
    est = tiny_net.estimator
    feats = {"layer2": torch.randn(2, 128, 16, 16), "layer3": torch.randn(2, 256, 8, 8)}
    with torch.no_grad():
        ref = est.reference({k: v[:1] for k, v in feats.items()}, torch.tensor([[30.0, 30.0, 80.0, 90.0]]))
        boxes = torch.tensor([[[10.0, 12.0, 60.0, 70.0], [40.0, 30.0, 100.0, 120.0], [5.0, 5.0, 20.0, 30.0]]] * 2)
        direct = est.score(est.test_features(feats, ref), boxes)
        x3, x4 = est.pool(TestFeatures(est.test_conv3(feats["layer2"]), est.test_conv4(feats["layer3"]), (0.0, 0.0)),
                          boxes)
        folded = est.score_pooled(x3 * ref[0][0][:, None, None], x4 * ref[1][0][:, None, None]).reshape(2, 3)
    torch.testing.assert_close(folded, direct, rtol=1e-5, atol=1e-5)


def test_adaptation_lowers_the_first_frame_loss_and_leaves_the_network_alone(small_seq):
    with one_torch_thread():
        # Fitted to frames 0 and 3: an energy that depends on the box (a random-init one is nearly flat in the
        # modulation), sharp and wrong on the zoomed and shifted views it was not fitted to.
        net = fit_tiny_estimator(small_seq, 60)[0]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = _params(steps=40)
    feats, boxes = _views(net, small_seq, params)
    with one_torch_thread(), torch.no_grad():
        m0 = net.estimator.reference({k: v[:1] for k, v in feats.items()}, boxes[:1])
    with one_torch_thread():
        m1 = adapt_modulation(net.estimator, feats, boxes, m0, net.config["loss"], params["box_refinement"]["adaptation"],
                              torch.Generator().manual_seed(0))
    # Judged on proposal samples the adaptation never saw, averaged over 3 draws.
    l0 = np.mean([_loss(net, feats, boxes, m0, s) for s in (1, 2, 3)])
    l1 = np.mean([_loss(net, feats, boxes, m1, s) for s in (1, 2, 3)])
    # Measured: 138.8 -> 58.5 (lr 0.02, 40 steps); the vectors move by 0.32 of their squared norm.
    assert l1 < 0.6 * l0, (l0, l1)
    change = sum(float((a - b).pow(2).sum()) for a, b in zip(m1, m0)) / sum(float(b.pow(2).sum()) for b in m0)
    assert 0.05 < change < 1.0, change
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(p.grad is None for p in net.parameters())


def test_tracker_adapts_only_when_asked(tiny_net, small_seq):
    tracks, mods = [], []
    for steps in (0, 10):
        tr = EBMAtomTracker(_params(steps=steps), net=tiny_net)
        with one_torch_thread():
            out = tr.initialize(small_seq.frame(0), {"init_bbox": small_seq.boxes[0]})
            tracks.append([tr.track(small_seq.frame(i))["target_bbox"] for i in (1, 2)])
        assert (out["time_adapt"] > 0) == (steps > 0) and out["time_adapt"] < out["time"]
        mods.append(tr.modulation)
    # steps 0: the reference branch's vectors, exactly (the paper's tracker and every earlier result); the
    # first view is the tracker's own first-frame crop.
    feats, boxes = _views(tiny_net, small_seq, _params())
    with torch.no_grad():
        ref = tiny_net.estimator.reference({k: v[:1] for k, v in feats.items()}, boxes[:1])
    torch.testing.assert_close(mods[0][0], ref[0])
    assert not torch.allclose(mods[1][0], mods[0][0])
    assert all(np.isfinite(b).all() and b[2] > 0 for b in tracks[1])


@pytest.mark.parametrize("over, match", [
    ({"steps": -1}, "box_refinement.adaptation.steps"),
    ({"steps": 5, "lr": -0.1}, "box_refinement.adaptation.lr"),
    ({"steps": 5, "zooms": []}, "box_refinement.adaptation.zooms"),
    ({"steps": 5, "offsets": [[0.1]]}, "box_refinement.adaptation.offsets"),
])
def test_bad_adaptation_settings_are_one_line_errors(tiny_net, over, match):
    with pytest.raises(ValueError, match=match.replace(".", r"\.")):
        EBMAtomTracker(_params(**over), net=tiny_net)


def test_adaptation_is_refused_without_an_energy(tiny_net):
    params = merge_params(_params(steps=5), {"box_refinement": {"mode": "iounet"}})
    with pytest.raises(ValueError, match="mode 'ebm'"):
        EBMAtomTracker(params, net=tiny_net)
    torch.manual_seed(0)
    iou_net = TrackerNet(dict(TINY_NET, loss={"method": "iou_confidence", "sigmas": [0.05, 0.5], "num_samples": 16}))
    with pytest.raises(ValueError, match="iou_confidence"):
        EBMAtomTracker(_params(steps=5), net=iou_net)
