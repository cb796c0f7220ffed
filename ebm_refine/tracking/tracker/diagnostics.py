"""How a box estimator behaves on annotated frames: the measurements behind the tracker's settings.

Two probes, both on real annotated sequences (never on the evaluation sequences when choosing settings):

* :func:`probe_pairs` -- (first frame, later frame) pairs as the tracker sees them: the modulation
  from the first frame's box, the later frame cropped around the true box with a search region that
  is ``size_error`` times the right size (1: a tracker with the right size; 0.7: one whose box has
  shrunk). It records f for the ground truth and for boxes a collapse would pick (:func:`probe_boxes`:
  shrunk, grown, halves and thirds of the target, shifted), and where the tracker's box estimation
  (:func:`~ebm_refine.tracking.tracker.box_estimation.estimate_box`) ends when started from the true
  box scaled by ``init_scales``. The modulation is the tracker's: with ``box_refinement.adaptation``
  it is adapted to the first frame as the tracker adapts it.
* :func:`probe_tracking` -- the whole tracker over sequences: per frame the tracked/true area ratio,
  IoU, and f of the true box and of the tracked box in the search region the tracker used, which tells
  a collapse the energy prefers (f(tracked) > f(true)) from one the refinement walked into.

Both return plain dicts (JSON-ready); ``tools/probe_box_refinement.py`` prints and saves them.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence as _Seq, Tuple

import numpy as np
import torch

from ...core.boxes import box_iou_aligned, cxcywh_to_xyxy, xywh_to_xyxy
from ..datasets.sequence import Sequence, read_frame
from ..models.network import TrackerNet
from .adaptation import adapt_to_first_frame
from .box_estimation import estimate_box
from ..processing import image_to_tensor, sample_patch, search_region_side

__all__ = ["PROBE_BOXES", "probe_boxes", "probe_pairs", "probe_tracking", "summarize_pairs"]

# name -> (centre offset in units of (w, h), size factors (w, h)), applied to the true box.
PROBE_BOXES: Dict[str, Tuple[Tuple[float, float], Tuple[float, float]]] = {
    "gt": ((0.0, 0.0), (1.0, 1.0)),
    **{f"scale_{s:g}": ((0.0, 0.0), (s, s)) for s in (0.5, 0.6, 0.7, 0.8, 0.9, 1.1, 1.25, 1.4, 1.7, 2.0)},
    "top_half": ((0.0, -0.25), (1.0, 0.5)),
    "bottom_half": ((0.0, 0.25), (1.0, 0.5)),
    "left_half": ((-0.25, 0.0), (0.5, 1.0)),
    "right_half": ((0.25, 0.0), (0.5, 1.0)),
    "top_third": ((0.0, -1.0 / 3.0), (1.0, 1.0 / 3.0)),
    "middle_third": ((0.0, 0.0), (1.0, 1.0 / 3.0)),
    "shift_x_0.25": ((0.25, 0.0), (1.0, 1.0)),
    "shift_y_0.25": ((0.0, 0.25), (1.0, 1.0)),
}


def probe_boxes(gt_cxcywh: np.ndarray) -> Tuple[List[str], np.ndarray]:
    """The :data:`PROBE_BOXES` of one true box: names and (K, 4) cx, cy, w, h boxes (same units)."""
    cx, cy, w, h = (float(v) for v in gt_cxcywh)
    out = [[cx + ox * w, cy + oy * h, w * sw, h * sh] for (ox, oy), (sw, sh) in PROBE_BOXES.values()]
    return list(PROBE_BOXES), np.asarray(out, dtype=np.float64)


def _valid_frames(seq: Sequence) -> np.ndarray:
    gt = np.asarray(seq.ground_truth, dtype=np.float64)
    ok = np.isfinite(gt).all(1) & (gt[:, 2] > 0) & (gt[:, 3] > 0)
    if seq.target_visible is not None:
        ok &= np.asarray(seq.target_visible, dtype=bool)
    return np.flatnonzero(ok)


def _crop_features(net: TrackerNet, image: np.ndarray, center, side: float, out_size: int):
    crop, tf = sample_patch(image, (center[0], center[1]), side, out_size)
    dev = next(net.parameters()).device
    with torch.no_grad():
        return net.backbone(image_to_tensor(crop).to(dev)), tf


def probe_pairs(net: TrackerNet, sequences: _Seq[Sequence], params: Dict[str, Any], num_pairs: int = 200,
                seed: int = 0, size_errors: _Seq[float] = (1.0, 0.7, 1.4),
                init_scales: _Seq[float] = (0.7, 1.0, 1.4)) -> List[Dict[str, Any]]:
    """Per-pair records of the first probe (see the module docstring).

    Args:
        net: the tracker network (box estimator + backbone), in eval mode.
        sequences: annotated sequences; frame 0 is the reference, a random later valid frame the test.
        params: tracker parameters (``search_area_factor``, ``image_sample_size``, ``box_refinement``).
        num_pairs: pairs drawn (sequence uniformly, then a frame), from ``seed``.
        size_errors: search-region size factors (the size of a tracker's previous estimate / true size).
        init_scales: box estimation is started from the true box with its sides times these.
    Returns:
        one dict per (pair, size error): ``sequence``, ``frame``, ``size_error``, ``energy`` (name ->
        f), ``refined`` (init scale -> ``{"area_ratio", "iou"}`` of the estimated box vs the truth).
    """
    rng = np.random.default_rng(seed)
    usable = [(s, v) for s in sequences for v in [_valid_frames(s)] if v.size >= 2 and v[0] == 0]
    if not usable:
        raise ValueError("no sequence has a valid first-frame box and another valid frame")
    area, sample = float(params["search_area_factor"]), int(params["image_sample_size"])
    cfg = params["box_refinement"]
    gen = torch.Generator(device=next(net.parameters()).device).manual_seed(seed)
    est = net.estimator
    records = []
    ref_cache: Dict[str, Any] = {}
    for _ in range(num_pairs):
        seq, valid = usable[int(rng.integers(len(usable)))]
        t = int(rng.choice(valid[1:]))
        if seq.name not in ref_cache:
            box0 = seq.ground_truth[0]
            c0 = box0[:2] + box0[2:] / 2
            image0 = read_frame(seq.frames[0])
            feats0, tf0 = _crop_features(net, image0, c0, search_region_side(box0[2], box0[3], area), sample)
            ref = torch.as_tensor(tf0.boxes_to_crop(np.r_[box0[:2], box0[:2] + box0[2:]]), dtype=torch.float32,
                                  device=feats0["layer2"].device)
            with torch.no_grad():
                mod = est.reference(feats0, ref[None])
            # As the tracker does (box_refinement.adaptation; a no-op with steps 0).
            ref_cache[seq.name] = adapt_to_first_frame(net, image0, box0, mod, params, gen, plain=(feats0, ref))
        modulation = ref_cache[seq.name]
        image = read_frame(seq.frames[t])
        gt = seq.ground_truth[t]
        center = gt[:2] + gt[2:] / 2
        for err in size_errors:
            feats, tf = _crop_features(net, image, center, search_region_side(gt[2], gt[3], area) * float(err), sample)
            gt_crop = np.r_[(center - [tf.x0, tf.y0]) * tf.scale, gt[2:] * tf.scale]
            names, boxes = probe_boxes(gt_crop)
            dev = feats["layer2"].device
            xyxy = cxcywh_to_xyxy(torch.as_tensor(boxes, dtype=torch.float32, device=dev))
            with torch.no_grad():
                f = est.score(est.test_features(feats, modulation), xyxy[None])[0].tolist()
            refined = {}
            gt_t = torch.as_tensor(gt_crop, dtype=torch.float32, device=dev)
            for s in init_scales:
                res = estimate_box(est, feats, modulation, gt_t[:2], gt_t[2:] * float(s), cfg, gen)
                if res is None:
                    refined[f"{s:g}"] = {"area_ratio": float("nan"), "iou": 0.0}
                    continue
                iou = box_iou_aligned(cxcywh_to_xyxy(res.box[None]), cxcywh_to_xyxy(gt_t[None]))[0]
                refined[f"{s:g}"] = {"area_ratio": float(res.box[2] * res.box[3] / (gt_t[2] * gt_t[3])),
                                     "iou": float(iou)}
            records.append({"sequence": seq.name, "frame": t, "size_error": float(err),
                            "energy": dict(zip(names, f)), "refined": refined})
    return records


def summarize_pairs(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per size error: for each probe box P(f(box) > f(gt)) and the median f(box) - f(gt); the share of
    pairs where the true box has the highest f of the set; per init scale the median area ratio, the
    share of collapses (ratio < 0.7) and of blow-ups (> 1.4), and the mean IoU of the estimated box."""
    out: Dict[str, Any] = {}
    for err in sorted({r["size_error"] for r in records}):
        rows = [r for r in records if r["size_error"] == err]
        names = list(rows[0]["energy"])
        e = np.array([[r["energy"][n] for n in names] for r in rows])
        d = e - e[:, :1]
        boxes = {n: {"p_beats_gt": float(np.mean(d[:, i] > 0)), "median_delta": float(np.median(d[:, i]))}
                 for i, n in enumerate(names) if n != "gt"}
        refined = {}
        for s in rows[0]["refined"]:
            ratio = np.array([r["refined"][s]["area_ratio"] for r in rows])
            iou = np.array([r["refined"][s]["iou"] for r in rows])
            refined[s] = {"median_area_ratio": float(np.nanmedian(ratio)), "collapse": float(np.mean(ratio < 0.7)),
                          "blow_up": float(np.mean(ratio > 1.4)), "mean_iou": float(np.mean(iou))}
        out[f"{err:g}"] = {"pairs": len(rows), "p_gt_best": float(np.mean(e[:, 0] >= e[:, 1:].max(1))),
                           "boxes": boxes, "refined": refined}
    return out


def probe_tracking(tracker, sequences: _Seq[Sequence], max_frames: Optional[int] = None) -> Dict[str, Any]:
    """Run ``tracker`` (an :class:`~ebm_refine.tracking.tracker.EBMAtomTracker`) over ``sequences``.

    Returns ``{"sequences": {name: {...}}, "all": {...}}`` with, per sequence, the median tracked/true
    area ratio, the mean IoU, the share of frames with ratio < 0.7 and > 1.4, and among frames with
    ratio < 0.7 the share where f(tracked box) > f(true box) in the tracker's own search region
    (the energy prefers the collapsed box) -- ``None`` when there is no such frame.
    """
    per_seq: Dict[str, Any] = {}
    all_ratio, all_iou, all_pref = [], [], []
    est = tracker.net.estimator
    for seq in sequences:
        tracker.initialize(read_frame(seq.frames[0]), seq.init_info())
        n = len(seq) if max_frames is None else min(len(seq), max_frames)
        ratios, ious, prefers = [], [], []
        for i in range(1, n):
            image = read_frame(seq.frames[i])
            pos, size = tracker.pos.copy(), tracker.size.copy()
            out = tracker.track(image)
            gt = np.asarray(seq.ground_truth[i], dtype=np.float64)
            if not (np.isfinite(gt).all() and gt[2] > 0 and gt[3] > 0):
                continue
            pred = np.asarray(out["target_bbox"], dtype=np.float64)
            ratio = pred[2] * pred[3] / (gt[2] * gt[3])
            iou = float(box_iou_aligned(xywh_to_xyxy(torch.as_tensor(pred[None])), xywh_to_xyxy(torch.as_tensor(gt[None])))[0])
            ratios.append(ratio)
            ious.append(iou)
            if ratio < 0.7 and tracker.mode != "none":
                # The crop the tracker used for this frame; f of the truth and of the tracked box in it.
                crop, tf = tracker._crop(image, pos, size)
                feats = tracker._features(crop)
                pair = tf.boxes_to_crop(np.stack([np.r_[gt[:2], gt[:2] + gt[2:]], np.r_[pred[:2], pred[:2] + pred[2:]]]))
                with torch.no_grad():
                    f = est.score(est.test_features(feats, tracker.modulation),
                                  torch.as_tensor(pair, dtype=torch.float32, device=tracker.device)[None])[0].tolist()
                prefers.append(f[1] > f[0])
        per_seq[seq.name] = _track_stats(ratios, ious, prefers)
        all_ratio += ratios
        all_iou += ious
        all_pref += prefers
    return {"sequences": per_seq, "all": _track_stats(all_ratio, all_iou, all_pref)}


def _track_stats(ratios, ious, prefers) -> Dict[str, Any]:
    r = np.asarray(ratios, dtype=np.float64)
    return {"frames": int(r.size), "median_area_ratio": float(np.median(r)) if r.size else float("nan"),
            "mean_iou": float(np.mean(ious)) if ious else float("nan"),
            "collapsed": float(np.mean(r < 0.7)) if r.size else float("nan"),
            "blown_up": float(np.mean(r > 1.4)) if r.size else float("nan"),
            "energy_prefers_collapsed": float(np.mean(prefers)) if prefers else None}
