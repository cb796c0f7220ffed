"""First-frame adaptation of the box estimator's modulation vectors.

The box estimator scores a box through test maps multiplied by the modulation vectors the reference branch
computes from the first frame (:meth:`EnergyBoxEstimator.reference`). Those vectors are a single forward
pass: nothing checks that, with them, the energy actually peaks at the annotated box. On small or
ambiguous targets it often does not (a wakeboarder's dark upper body scores above the whole rider and
board, so the track shrinks onto it). The first frame is the one frame whose box is known, so the
tracker can check and correct this, as it trains its online classifier on the same frame:

* crops of the first frame at a few zooms and offsets (the target at other positions and scales in the
  search region, as later frames show it), every one with its exact box;
* the loss the network was trained with (ML-IS with the network's proposal; ``net.config['loss']``) on
  proposal samples around those boxes, minimised over the two modulation vectors only, a few Adam steps,
  with a penalty ``anchor * |m - m0|^2 / |m0|^2`` that keeps them near the reference branch's output (the
  network is not changed and stays shared by all targets).

It corrects the opposite failure too: energies that prefer boxes larger than the target (a thin building
tracked at 5.6x its area, an occluded face at 2.1x) in cross-validation on the real training sequences,
where it lifts the AUC from 45.9 to 49.6 (2 training seeds; docs/tracker_results.md);
``configs/tracking/ebm.yaml`` uses 30 steps.

Cost, once per sequence: one backbone pass per view, the test maps and one pooling of
``views x (num_samples + 1)`` boxes, then ``steps`` forward/backward passes of the small box layers only
(pooling is linear, so the modulation can be applied to the pooled features).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ebm_refine.core.boxes import valid_box_mask
from ebm_refine.core.objectives import ebm_loss, sampling_options
from ebm_refine.core.proposal import BoxProposal

from ..models.box_estimator import EnergyBoxEstimator, Modulation
from ..models.network import TrackerNet
from ..processing import image_to_tensor, sample_patch, search_region_side

__all__ = ["ADAPTATION_DEFAULTS", "check_adaptation", "adaptation_views", "adapt_modulation", "adapt_to_first_frame"]

ADAPTATION_DEFAULTS: Dict[str, Any] = {
    "steps": 0,  # 0: off (the reference branch's vectors as they are, the paper's tracker)
    "lr": 0.02,  # Adam step, relative to the RMS of the initial vectors
    "anchor": 0.1,  # weight of |m - m0|^2 / |m0|^2
    "num_samples": 128,  # proposal samples per view (drawn once; the paper's training count)
    # Views of the first frame: search-region zooms (crop side / the tracker's side) x centre offsets
    # (fractions of the target's width / height). Zoom < 1 shows the target larger, > 1 smaller.
    "zooms": [0.8, 1.0, 1.25],
    "offsets": [[0.0, 0.0], [0.3, 0.2], [-0.3, -0.2]],
}


def check_adaptation(cfg: Dict[str, Any]) -> None:
    """One-line ``ValueError`` naming the ``box_refinement.adaptation`` key whose value is out of range."""
    key = "box_refinement.adaptation"
    if int(cfg["steps"]) < 0:
        raise ValueError(f"{key}.steps must be >= 0, got {cfg['steps']}")
    for name in ("lr", "anchor"):
        if not float(cfg[name]) >= 0:
            raise ValueError(f"{key}.{name} must be >= 0, got {cfg[name]}")
    if int(cfg["num_samples"]) < 1:
        raise ValueError(f"{key}.num_samples must be >= 1, got {cfg['num_samples']}")
    if not cfg["zooms"] or any(not float(z) > 0 for z in cfg["zooms"]):
        raise ValueError(f"{key}.zooms must be a non-empty list of positive numbers, got {cfg['zooms']}")
    if not cfg["offsets"] or any(len(o) != 2 for o in cfg["offsets"]):
        raise ValueError(f"{key}.offsets must be a non-empty list of [dx, dy] pairs, got {cfg['offsets']}")


def adaptation_views(zooms: Sequence[float], offsets: Sequence[Sequence[float]]):
    """The (zoom, dx, dy) of every view: all zooms x all offsets, the plain view (1, 0, 0) first if present."""
    views = [(float(z), float(o[0]), float(o[1])) for z in zooms for o in offsets]
    views.sort(key=lambda v: v != (1.0, 0.0, 0.0))
    return views


def adapt_modulation(estimator: EnergyBoxEstimator, feats: Dict[str, Tensor], boxes: Tensor,
                     modulation: Modulation, loss_cfg: Dict[str, Any], cfg: Dict[str, Any],
                     generator: Optional[torch.Generator] = None) -> Modulation:
    """Modulation vectors that make the energy peak at the known boxes of the first-frame views.

    Args:
        estimator: the box estimator (not changed; no gradient reaches its parameters).
        feats: backbone maps of V views of the first frame, ``layer2`` (V, C3, h, w), ``layer3`` (V, C4, h', w').
        boxes: (V, 4) the target in each view, xyxy crop pixels.
        modulation: (1, P3), (1, P4) the reference branch's vectors, the starting point and anchor.
        loss_cfg: the network's training loss (``method``: an EBM method or ``iou_confidence``,
            ``sigmas``, ``part_weight``, ``part_sigma``; ``net.config['loss']``).
        cfg: ``box_refinement.adaptation`` (see :data:`ADAPTATION_DEFAULTS`).
        generator: RNG for the proposal samples (the tracker's candidate-box generator).
    Returns:
        (1, P3), (1, P4) adapted vectors (detached); ``modulation`` itself when ``steps`` is 0.
    """
    steps = int(cfg["steps"])
    if steps == 0:
        return modulation
    method = loss_cfg["method"]
    if method == "iou_confidence":
        raise ValueError("box_refinement.adaptation needs a network trained with an EBM loss "
                         "(its net.loss.method is iou_confidence); set adaptation.steps: 0")
    opts = sampling_options(method, loss_cfg.get("nce_beta"))
    proposal = BoxProposal(loss_cfg["sigmas"], part_weight=float(loss_cfg.get("part_weight") or 0.0),
                           part_sigma=float(loss_cfg.get("part_sigma") or 0.1))
    samples = proposal.sample(boxes, int(cfg["num_samples"]), include_reference=opts.include_center, beta=opts.beta,
                              generator=generator)
    valid = valid_box_mask(samples.boxes) & valid_box_mask(boxes, min_size=1.0)[:, None]
    with torch.no_grad():
        # Pooling is linear in the maps and the modulation is a per-channel product, so the samples are
        # pooled once from the unmodulated maps and each step only reruns the small box layers.
        x3, x4 = estimator.pool((estimator.test_conv3(feats["layer2"]), estimator.test_conv4(feats["layer3"]),
                                 (0.0, 0.0)), samples.boxes)
    v, m = samples.boxes.shape[:2]
    x3, x4 = x3.reshape(v, m, *x3.shape[1:]), x4.reshape(v, m, *x4.shape[1:])
    m0 = [t.detach() for t in modulation]
    scale = torch.cat([t.flatten() for t in m0]).pow(2).mean().sqrt().clamp(min=1e-6)
    norm0 = max(sum(float(t.pow(2).sum()) for t in m0), 1e-12)
    params = [t.clone().requires_grad_(True) for t in m0]
    opt = torch.optim.Adam(params, lr=float(cfg["lr"]) * float(scale))
    anchor = float(cfg["anchor"])
    for _ in range(steps):
        scores = estimator.score_pooled((x3 * params[0][:, None, :, None, None]).flatten(0, 1),
                                        (x4 * params[1][:, None, :, None, None]).flatten(0, 1)).reshape(v, m)
        loss = ebm_loss(method, scores, samples.log_q, offsets=samples.rel, label_sigma=loss_cfg.get("label_sigma"),
                        valid=valid)
        loss = loss + anchor * sum((p - t).pow(2).sum() for p, t in zip(params, m0)) / norm0
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    return params[0].detach(), params[1].detach()


def adapt_to_first_frame(net: TrackerNet, image: np.ndarray, box: np.ndarray, modulation: Modulation,
                         params: Dict[str, Any], generator: Optional[torch.Generator] = None,
                         plain: Optional[Tuple[Dict[str, Tensor], Tensor]] = None) -> Modulation:
    """:func:`adapt_modulation` on the views of one first frame; what the tracker and the probes call.

    Args:
        net: the tracker network (backbone + estimator).
        image: (H, W, 3) uint8 first frame.
        box: (4,) the target, x, y, w, h image pixels.
        modulation: the reference branch's vectors for that box.
        params: tracker parameters (``search_area_factor``, ``image_sample_size``,
            ``box_refinement.adaptation``).
        generator: RNG for the proposal samples.
        plain: optional (backbone maps with batch 1, (4,) xyxy crop box) of the unshifted, unzoomed view,
            already computed by the caller; reused instead of a second backbone pass.
    """
    cfg = params["box_refinement"]["adaptation"]
    if int(cfg["steps"]) == 0:
        return modulation
    box = np.asarray(box, dtype=np.float64)
    center, size = box[:2] + box[2:] / 2.0, box[2:]
    side = search_region_side(size[0], size[1], params["search_area_factor"])
    out = int(params["image_sample_size"])
    dev = next(net.parameters()).device
    crops, boxes = [], []
    views = adaptation_views(cfg["zooms"], cfg["offsets"])
    for zoom, dx, dy in views:
        if plain is not None and (zoom, dx, dy) == (1.0, 0.0, 0.0):
            continue
        c = center + np.array([dx, dy]) * size
        crop, tf = sample_patch(image, (c[0], c[1]), side * zoom, out)
        crops.append(crop)
        boxes.append(tf.boxes_to_crop(np.r_[box[:2], box[:2] + box[2:]]))
    feats: Dict[str, Tensor] = {}
    parts = []
    if len(crops) < len(views):
        feats = {k: v[:1] for k, v in plain[0].items()}
        parts.append(plain[1].reshape(1, 4))
    if crops:
        with torch.no_grad():
            more = net.backbone(image_to_tensor(np.stack(crops)).to(dev))
        feats = {k: torch.cat([feats[k], v]) if feats else v for k, v in more.items()}
        parts.append(torch.as_tensor(np.stack(boxes), dtype=torch.float32, device=dev))
    return adapt_modulation(net.estimator, feats, torch.cat(parts), modulation, net.config["loss"], cfg, generator)
