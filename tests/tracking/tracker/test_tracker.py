"""The tracker's API contract, bad input, grayscale frames, a target leaving the frame, real footage."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ebm_refine.core.boxes import box_iou_aligned, xywh_to_xyxy
from ebm_refine.tracking.tracker import EBMAtomTracker, load_tracker_params
from ebm_refine.utils.config import merge_params

from tracker_helpers import TINY_TRACKER


def _tracker(net, mode="ebm", **over):
    params = load_tracker_params(None, merge_params(TINY_TRACKER, {"box_refinement": {"mode": mode}, **over},
                                                    strict=False))
    return EBMAtomTracker(params, net=net)


def _assert_valid(box, hw):
    assert isinstance(box, list) and len(box) == 4 and all(isinstance(v, float) for v in box)
    x, y, w, h = box
    assert np.isfinite(box).all() and w > 0 and h > 0
    assert x < hw[1] and y < hw[0] and x + w > 0 and y + h > 0  # overlaps the image


@pytest.mark.parametrize("mode", ["ebm", "iounet", "none"])
def test_api_contract(tiny_net, small_seq, mode):
    tr = _tracker(tiny_net, mode)
    out = tr.initialize(small_seq.frame(0), {"init_bbox": list(small_seq.boxes[0])})
    assert isinstance(out, dict) and out["time"] > 0
    for i in range(1, 4):
        res = tr.track(small_seq.frame(i), {})
        _assert_valid(res["target_bbox"], (120, 160))
        assert {"energy", "score", "flag", "time", "time_refine"} <= set(res)
        assert res["flag"] in ("normal", "hard_negative", "uncertain", "not_found")
        if mode == "none":
            assert res["time_refine"] == 0.0
            np.testing.assert_allclose(res["target_bbox"][2:], small_seq.boxes[0][2:])


def test_deterministic(tiny_net, small_seq):
    runs = []
    for _ in range(2):
        tr = _tracker(tiny_net)
        tr.initialize(small_seq.frame(0), {"init_bbox": small_seq.boxes[0]})
        runs.append([tr.track(small_seq.frame(i))["target_bbox"] for i in (1, 2)])
    assert runs[0] == runs[1]


def test_feature_window_does_not_change_the_track(tiny_net, small_seq):
    # The estimator's test maps computed only around the initial boxes give the same boxes as whole maps.
    runs = []
    for window in (None, 0.5):
        tr = _tracker(tiny_net, image_sample_size=256, box_refinement={"mode": "ebm", "feature_window": window})
        tr.initialize(small_seq.frame(0), {"init_bbox": small_seq.boxes[0]})
        runs.append([tr.track(small_seq.frame(i)) for i in range(1, 6)])
    # Equal up to float rounding (the window's convolution sums in another order), which the tracker
    # feeds back frame to frame: 1e-4 px after 3 frames, ~1e-2 px after 5.
    for a, b in zip(*runs):
        np.testing.assert_allclose(a["target_bbox"], b["target_bbox"], rtol=0, atol=0.05)
        assert a["energy"] == pytest.approx(b["energy"], rel=1e-3, abs=1e-4)


@pytest.mark.parametrize("mode", ["ebm", "iounet"])
def test_per_frame_path_stays_on_the_tracker_device(tiny_net, small_seq, mode):
    """Issue 13 (users with GPUs): every tensor of track() is made on the tracker's device and none is copied
    off it. Run with the default device set to "meta" (a tensor made without ``device=`` would land there and
    break the numbers) and watch every device move; only the box, the classifier's peak and the energies are
    read back to the host."""
    from torch.overrides import TorchFunctionMode

    class Watch(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.moves, self.read_back = [], 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            targets = [a for a in list(args[1:]) + [kwargs.get("device")] if isinstance(a, (str, torch.device))]
            if name in ("cpu", "cuda", "numpy") or (name == "to" and any(
                    torch.device(a) != torch.device("cpu") for a in targets)):
                self.moves.append(name)
            if name in ("tolist", "item", "__float__", "__int__", "__bool__"):
                self.read_back += args[0].numel()
            return func(*args, **kwargs)

    expected = _tracker(tiny_net, mode)
    expected.initialize(small_seq.frame(0), {"init_bbox": small_seq.boxes[0]})
    tr = _tracker(tiny_net, mode)
    tr.initialize(small_seq.frame(0), {"init_bbox": small_seq.boxes[0]})
    for i in (1, 2, 3):
        want = expected.track(small_seq.frame(i))
        with torch.device("meta"), Watch() as watch:
            got = tr.track(small_seq.frame(i))
        assert got["target_bbox"] == want["target_bbox"] and got["energy"] == want["energy"]
        assert watch.moves == []
        # Scalars only: the classifier's peak and neighbours, candidate counts, the box and 2 energies.
        assert 0 < watch.read_back <= 40, watch.read_back


@pytest.mark.parametrize("box,match", [
    ([200.0, 10.0, 20.0, 20.0], "outside"),
    ([-50.0, -50.0, 20.0, 20.0], "outside"),
    ([10.0, 10.0, 0.0, 20.0], "zero"),
    ([10.0, 10.0, 20.0, -1.0], "zero"),
    ([10.0, float("nan"), 20.0, 20.0], "finite"),
    ([10.0, 10.0, 20.0], "4 finite numbers"),
])
def test_bad_initial_box(tiny_net, small_seq, box, match):
    with pytest.raises(ValueError, match=match):
        _tracker(tiny_net).initialize(small_seq.frame(0), {"init_bbox": box})


def test_bad_calls(tiny_net, small_seq):
    tr = _tracker(tiny_net)
    with pytest.raises(RuntimeError, match="initialize"):
        tr.track(small_seq.frame(0))
    with pytest.raises(ValueError, match="init_bbox"):
        tr.initialize(small_seq.frame(0), {})
    with pytest.raises(ValueError, match="image"):
        tr.initialize(np.zeros((10, 10, 2), np.uint8), {"init_bbox": [1, 1, 4, 4]})
    with pytest.raises(ValueError, match="mode"):
        _tracker(tiny_net, mode="magic")
    with pytest.raises(ValueError, match="checkpoint"):
        EBMAtomTracker(load_tracker_params(None))


def test_grayscale_frames(tiny_net, small_seq):
    tr = _tracker(tiny_net)
    gray = [small_seq.frame(i).mean(axis=2).astype(np.uint8) for i in range(3)]
    tr.initialize(gray[0], {"init_bbox": small_seq.boxes[0]})
    _assert_valid(tr.track(gray[1])["target_bbox"], (120, 160))
    _assert_valid(tr.track(gray[2][:, :, None])["target_bbox"], (120, 160))  # (H, W, 1) too


def test_target_leaving_the_frame(tiny_net):
    """A square slides out through the right border and the scene stays empty: no crash, a valid box."""
    rng = np.random.default_rng(0)
    bg = rng.integers(60, 120, size=(96, 128, 3)).astype(np.uint8)
    tex = rng.integers(0, 255, size=(20, 20, 3)).astype(np.uint8)
    frames, boxes = [], []
    for i in range(12):
        f = bg.copy()
        x = 60 + 12 * i
        if x < 128:
            f[40:60, x:min(128, x + 20)] = tex[:, :min(20, 128 - x)]
        frames.append(f)
        boxes.append([x, 40, 20, 20])
    tr = _tracker(tiny_net)
    tr.initialize(frames[0], {"init_bbox": boxes[0]})
    for f in frames[1:]:
        _assert_valid(tr.track(f)["target_bbox"], (96, 128))


def test_parameter_files():
    for name in ("ebm", "iounet", "norefine"):
        p = load_tracker_params(name)
        assert p["box_refinement"]["mode"] == {"ebm": "ebm", "iounet": "iounet", "norefine": "none"}[name]
        assert p["checkpoint"].endswith("net.pth")
    # ebm: the paper's refinement (pytracking's atom_prob_ml rule), chosen on the validation sequences.
    paper = load_tracker_params("ebm")["box_refinement"]
    assert (paper["step_size_center"], paper["step_size_size"]) == (2e-4, 1e-3)
    assert paper["decay"] == 1.0 and paper["backtracking"] is False
    bt = load_tracker_params("ebm_backtracking")["box_refinement"]
    assert (bt["step_size_center"], bt["step_size_size"], bt["decay"], bt["backtracking"]) == (5e-4, 1e-2, 0.5, True)
    # The IoU-Net baseline keeps the rule its step sizes were chosen with, whatever ebm.yaml's is.
    iou = load_tracker_params("iounet")["box_refinement"]
    assert (iou["step_size_center"], iou["step_size_size"], iou["decay"], iou["backtracking"]) == (3e-2, 2e-1, 0.5, True)
    fast, ref = load_tracker_params("ebm_fast"), load_tracker_params("ebm")
    assert fast["box_refinement"]["num_steps"] == 3 and ref["box_refinement"]["num_steps"] == 10
    fast["box_refinement"]["num_steps"] = 10
    assert fast == ref  # the speed setting differs from ebm only in the number of steps
    # ebm adapts the modulation to the first frame (chosen by cross-validation); ebm_paper is the paper's
    # tracker exactly, and the modes without an ML-IS energy do not adapt.
    assert ref["box_refinement"]["adaptation"]["steps"] == 30
    paper_exact = load_tracker_params("ebm_paper")
    assert paper_exact["box_refinement"]["adaptation"]["steps"] == 0
    paper_exact["box_refinement"]["adaptation"]["steps"] = 30
    assert paper_exact == ref
    for name in ("norefine", "iounet", "ebm_backtracking"):
        assert load_tracker_params(name)["box_refinement"]["adaptation"]["steps"] == 0, name
    with pytest.raises(KeyError, match="box_refinement.nmu_steps"):
        load_tracker_params("ebm", {"box_refinement": {"nmu_steps": 3}})


@pytest.mark.parametrize("override,new", [
    ({"search_area_scale": 4.0}, "'search_area_factor'"),
    ({"box_refinement": {"step_size": [1e-3, 1e-2]}}, "'box_refinement.step_size_center and box_refinement.step_size_size'"),
    ({"box_refinement": {"step_decay": 0.5}}, "'box_refinement.decay'"),
])
def test_renamed_tracker_parameters_name_their_new_key(override, new):
    with pytest.raises(KeyError, match=f"was renamed {new}; use the new name$"):
        load_tracker_params("ebm", override)


def test_real_sequence_few_frames(shared_data, mobilenet_weights):
    """OTB Crossing with ImageNet MobileNetV2 features: the classifier alone must follow the walker."""
    from ebm_refine.tracking.datasets import load_dataset, read_frame
    from ebm_refine.tracking.models import TrackerNet

    seq = load_dataset("otb", str(shared_data / "tracking" / "otb"), sequences=["Crossing"])[0]
    net = TrackerNet({"backbone": {"name": "mobilenet_v2", "weights": str(mobilenet_weights)},
                      "estimator": {"pred_dims": [8, 8], "inter_dims": [8, 8]}})
    for mode in ("none", "ebm"):
        tr = EBMAtomTracker(load_tracker_params(None, {"box_refinement": {"mode": mode},
                                                       "image_sample_size": 192}), net=net)
        tr.initialize(read_frame(seq.frames[0]), seq.init_info())
        for i in range(1, 8):
            res = tr.track(read_frame(seq.frames[i]))
            _assert_valid(res["target_bbox"], (240, 360))
        if mode == "none":
            pred = xywh_to_xyxy(torch.tensor(res["target_bbox"]))
            gt = xywh_to_xyxy(torch.tensor(seq.ground_truth[7], dtype=torch.float32))
            assert float(box_iou_aligned(pred, gt)) > 0.5


def test_shipped_networks_load_and_the_ebm_tracker_follows_a_real_walker(shared_data):
    """The networks the parameter files name (committed, 64-channel estimators) and their refinement."""
    from ebm_refine.tracking.datasets import load_dataset, read_frame

    # The IoU-Net file was trained before the loss was renamed iou_confidence (and beta nce_beta): load_net
    # converts the config it stores. The EBM file (part components, trained after the rename) stores them as is.
    for name, method in (("ebm", "ml_is"), ("iounet", "iou_confidence")):
        tr = EBMAtomTracker(name)
        assert tr.net.config["loss"]["method"] == method
        assert tr.net.estimator.box_fc3[0].out_features == 64 and tr.net.estimator.test_pool == (5, 3)
    seq = load_dataset("otb", str(shared_data / "tracking" / "otb"), sequences=["Crossing"])[0]
    tr = EBMAtomTracker("ebm_fast")
    tr.initialize(read_frame(seq.frames[0]), seq.init_info())
    ious = []
    for i in range(1, 12):
        res = tr.track(read_frame(seq.frames[i]))
        assert res["time_refine"] > 0 and np.isfinite(res["energy"])
        pred = xywh_to_xyxy(torch.tensor(res["target_bbox"]))
        gt = xywh_to_xyxy(torch.tensor(seq.ground_truth[i], dtype=torch.float32))
        ious.append(float(box_iou_aligned(pred, gt)))
    # Followed: every frame a success at the usual IoU 0.5 (measured: min 0.56, mean 0.715 with the shipped
    # network; 0.62 / 0.728 with the one before part components).
    assert min(ious) > 0.5 and np.mean(ious) > 0.7, ious


@pytest.mark.slow
@pytest.mark.parametrize("params", ["ebm", "ebm_fast"])
def test_shipped_ebm_network_does_not_collapse_on_real_video(shared_data, params):
    """Issue 13's failure: refined boxes shrinking onto a part of the target and staying there. On a real
    training-set sequence held out for validation (OTB Biker, 79 frames, the target shrinks to a quarter
    and grows back), the median tracked / true box area stays within 0.7 - 1.4."""
    from ebm_refine.tracking.datasets import load_dataset
    from ebm_refine.tracking.tracker.diagnostics import probe_tracking

    seq = load_dataset("otb", str(shared_data / "tracking_train"), sequences=["Biker"])[0]
    stats = probe_tracking(EBMAtomTracker(params), [seq])["all"]
    assert stats["frames"] == len(seq) - 1
    assert 0.7 <= stats["median_area_ratio"] <= 1.4, stats


@pytest.mark.slow
def test_first_frame_adaptation_stops_the_collapse_on_a_small_target(shared_data):
    """The collapse the paper's tracker does not escape: UAV123@10fps wakeboard4 (a 25 x 30 px rider in
    1280 x 720 frames), where the shipped network's reference branch ranks the rider's upper body above the
    whole rider from the first frame on. Without adaptation (``ebm_paper``) the tracked box keeps about a third
    of the true area; with it (``ebm``) the median ratio is within 0.7 - 1.4 (cross-validation runs: 0.33 and
    1.02 with candidate-box seed 0, the seed of these parameter files)."""
    from ebm_refine.tracking.datasets import load_dataset
    from ebm_refine.tracking.tracker.diagnostics import probe_tracking

    seq = load_dataset("otb", str(shared_data / "tracking_train"), sequences=["wakeboard4"])[0]
    paper = probe_tracking(EBMAtomTracker("ebm_paper"), [seq])["all"]
    adapted = probe_tracking(EBMAtomTracker("ebm"), [seq])["all"]
    assert paper["median_area_ratio"] < 0.5, paper
    assert 0.7 <= adapted["median_area_ratio"] <= 1.4 and adapted["mean_iou"] > paper["mean_iou"] + 0.1, adapted
