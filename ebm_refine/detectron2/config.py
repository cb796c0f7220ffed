"""``add_ebm_config``: the ``MODEL.EBM`` keys of the EBM ROI head; ``validate_ebm_config``: their ranges.

Every key is documented where it is defined. Unknown keys in a YAML file or ``--opts`` raise
Detectron2's usual ``KeyError: Non-existent config key`` because the node is not ``new_allowed``.
Values out of range fail when the model is built (:func:`validate_ebm_config`), naming the key.
"""
import math
import re

from detectron2.config import CfgNode as CN

from ..utils.errors import UserError

__all__ = ["add_ebm_config", "add_yolox_config", "validate_ebm_config", "validate_solver_config", "ConfigValueError",
           "RENAMED_KEYS", "renamed_key_hint",
           "ROBUST_RESIDUALS", "ROBUST_RESIDUAL_STARTS"]

# What DeepGUM's residual of a ground-truth box is (MODEL.EBM.ROBUST.RESIDUAL).
ROBUST_RESIDUALS = ("energy", "detector")
# Where the energy residual's refinement starts (MODEL.EBM.ROBUST.RESIDUAL_START; the tracker's robust.residual_start).
ROBUST_RESIDUAL_STARTS = ("annotation", "best_sample")

# Keys renamed for one vocabulary across the core, this plugin and the tracker (issue 17). An old key in a
# YAML file or ``--opts`` is an error naming its new name (no silent alias: two spellings of one setting
# would drift apart in shipped configs).
RENAMED_KEYS = {
    "MODEL.EBM_BACKBONE": "MODEL.COMPACT_RESNET",  # a compact ResNet, nothing EBM-specific about it
}


class ConfigValueError(UserError, ValueError):
    """A config value out of its range; the message names the key."""


def add_ebm_config(cfg: CN) -> CN:
    """Add the EBM head's config keys (with the paper's ML-IS detection defaults) to ``cfg``."""
    _C = cfg
    _C.MODEL.EBM = CN()
    # Training objective: ml_is | kld_is | nce | nce_plus | iou_confidence (IoU-Net-style baseline).
    _C.MODEL.EBM.LOSS = "ml_is"
    # Weight of the EBM loss in the total loss.
    _C.MODEL.EBM.LOSS_WEIGHT = 1.0
    # Boxes sampled from the proposal q(y | y_i) around each ground-truth box (M).
    _C.MODEL.EBM.NUM_SAMPLES = 128
    # Standard deviations of the K equal-weight mixture components of q, in the relative box
    # encoding: centre offsets in units of the ground-truth width/height ...
    _C.MODEL.EBM.PROPOSAL_SIGMAS = [0.0375, 0.075, 0.15]
    # ... and log-sizes; empty = the same as PROPOSAL_SIGMAS. (NCE+ reference: 0.075, 0.15, 0.3.)
    _C.MODEL.EBM.PROPOSAL_SIGMAS_SIZE = []
    # NCE+: the true sample is the ground truth perturbed with beta-scaled sigmas (reference 0.1).
    _C.MODEL.EBM.NCE_BETA = 0.1
    # KLD-IS: std of the Gaussian label density around the ground truth (relative encoding).
    _C.MODEL.EBM.LABEL_SIGMA = 0.0375
    # Ground-truth boxes used per image for the EBM loss (random subset; 0 = all). Bounds memory:
    # each ground truth costs NUM_SAMPLES + 1 pooled RoIs.
    _C.MODEL.EBM.MAX_GT_PER_IMAGE = 64
    # Train only the energy head on top of a frozen detector (the paper's setting). The detector is
    # loaded from MODEL.WEIGHTS (e.g. a model-zoo Faster R-CNN). False = joint training with the
    # usual Faster R-CNN losses.
    _C.MODEL.EBM.FREEZE_DETECTOR = True
    # With FREEZE_DETECTOR, training refuses a detector whose weights did not (all) load from
    # MODEL.WEIGHTS: a frozen random detector would train a useless head without a word. True allows it
    # (tests, debugging).
    _C.MODEL.EBM.ALLOW_UNTRAINED_DETECTOR = False
    # Joint training only: stop the EBM loss's gradients at the backbone/FPN features, so the energy
    # head learns on the detector's features without reshaping them. ML-IS can drive f to a sharp
    # peak at the ground truth; letting that reach the backbone destabilises training from scratch.
    _C.MODEL.EBM.DETACH_FEATURES = True

    # Detector-aware proposal: extra mixture components fitted to a detector's own errors (its boxes on training
    # images relative to the matched ground truth; tools/fit_detector_proposal.py writes the JSON file), so the
    # training samples also cover where that detector's boxes lie. Empty FILE = the paper's proposal only.
    _C.MODEL.EBM.DETECTOR_PROPOSAL = CN()
    _C.MODEL.EBM.DETECTOR_PROPOSAL.FILE = ""
    # Share of the NUM_SAMPLES drawn from the fitted components (the rest from PROPOSAL_SIGMAS).
    _C.MODEL.EBM.DETECTOR_PROPOSAL.WEIGHT = 0.5

    # The energy network f(x, y), built from ENERGY_HEAD_REGISTRY.
    _C.MODEL.EBM.HEAD = CN()
    _C.MODEL.EBM.HEAD.NAME = "FCEnergyHead"
    # Box-differentiable RoI pooling on MODEL.ROI_HEADS.IN_FEATURES (bins per side, samples per bin side).
    _C.MODEL.EBM.HEAD.POOLER_RESOLUTION = 7
    _C.MODEL.EBM.HEAD.POOLER_SAMPLING_RATIO = 2
    # FPN's level rule: a box of sqrt(area) s pools from level floor(4 + log2(s / CANONICAL_BOX_SIZE)) (level 4 =
    # stride 16), clamped to the levels of IN_FEATURES. 224 suits ~800 px inputs (Detectron2's default); a
    # smaller input wants it scaled with the image (YOLOX's 416 px: 112).
    _C.MODEL.EBM.HEAD.POOLER_CANONICAL_BOX_SIZE = 224.0
    # Fully connected layers after pooling, and their width (reference: 2 x 1024).
    _C.MODEL.EBM.HEAD.NUM_FC = 2
    _C.MODEL.EBM.HEAD.FC_DIM = 1024
    # One scalar per class (reference) or a single class-agnostic energy.
    _C.MODEL.EBM.HEAD.CLS_AGNOSTIC = False
    # WeldonEnergyHead (NAME "WeldonEnergyHead"; Durand et al., TPAMI 2019): a per-cell MLP (1x1 convs) scores
    # each of the P x P pooled cells; f = mean of the WELDON_KMAX highest cell scores + WELDON_ALPHA x mean of
    # the WELDON_KMIN lowest (negative evidence). KMAX in [1, P*P]; KMIN in [0, P*P] (0 = top-k only); ALPHA >= 0.
    # Checked when the head is built. Ignored by other heads.
    _C.MODEL.EBM.HEAD.WELDON_KMAX = 5
    _C.MODEL.EBM.HEAD.WELDON_KMIN = 5
    _C.MODEL.EBM.HEAD.WELDON_ALPHA = 1.0
    # Width of the per-cell hidden layer (1x1 conv + ReLU); 0 = region scores linear in the features.
    _C.MODEL.EBM.HEAD.WELDON_HIDDEN = 256
    # A trained energy head loaded after MODEL.WEIGHTS (the detector), e.g. the model_final.pth of a COCO-Refine
    # YOLOX run for EBMYOLOX; "" = none. The file's backbone tensors must equal the model's (the features the
    # head was trained on); applied only when MODEL.WEIGHTS has no energy head of its own.
    _C.MODEL.EBM.HEAD.WEIGHTS = ""

    # Test-time refinement of the final detections by gradient ascent on f (Algorithm S1).
    _C.MODEL.EBM.REFINE = CN()
    _C.MODEL.EBM.REFINE.ENABLED = True
    _C.MODEL.EBM.REFINE.NUM_STEPS = 10
    # Compute f and its box gradient with the head's fused fast path (prepared pyramid pooling, backward
    # written out) when the head has one (FCEnergyHead, WeldonEnergyHead); same boxes as autograd.
    # False = always autograd.
    _C.MODEL.EBM.REFINE.FUSED = True
    # Step sizes in the relative encoding of each detection (centre offsets, log-sizes) per unit
    # gradient. Reference: ML-IS 4e-4 / 1.6e-3, NCE+ 8e-4 / 3.2e-3.
    _C.MODEL.EBM.REFINE.STEP_SIZE_CENTER = 4e-4
    _C.MODEL.EBM.REFINE.STEP_SIZE_SIZE = 1.6e-3
    # Step-size factor after a step that does not increase f.
    _C.MODEL.EBM.REFINE.DECAY = 0.5
    # Non-maximum suppression before refinement: "standard" (Detectron2's, ranked by class score) or
    # "energy" (ranked by f of each candidate box, as in the reference implementation).
    _C.MODEL.EBM.REFINE.NMS = "standard"
    # Keep the unrefined boxes in `pred_boxes_unrefined` so both are evaluated from one forward pass.
    _C.MODEL.EBM.REFINE.KEEP_UNREFINED = True

    # DeepGUM outlier-robust training (Lathuilière et al., ECCV 2018; ebm_refine.core.robust). Per
    # ground-truth box, a Gaussian-uniform mixture on the residual e = (the box the current energy prefers
    # near the annotation) - (the annotation), in relative box coordinates, gives the inlier
    # responsibility r; the EBM loss of that box is weighted by r (sum r l / sum r). EM runs on the
    # residuals of the last PERIOD iterations; no outlier fraction is set by hand.
    _C.MODEL.EBM.ROBUST = CN()
    _C.MODEL.EBM.ROBUST.ENABLED = False
    # Iterations between EM fits (the paper refits every epoch: about images / IMS_PER_BATCH).
    _C.MODEL.EBM.ROBUST.PERIOD = 100
    # Iterations before the first fit (every r is 1 until then): an untrained energy's residuals say
    # nothing about the annotations.
    _C.MODEL.EBM.ROBUST.WARMUP = 200
    # What the residual of a ground-truth box is (docs/robust_regression_detection.md):
    #   "energy":   the annotation refined by NUM_STEPS gradient-ascent steps of the current energy, minus
    #               the annotation (any model with an energy head);
    #   "detector": the median over the foreground proposals matched to the annotation of Faster R-CNN's
    #               regressed box, minus the annotation: the detector's own prediction, DeepGUM's residual
    #               (EBMRCNN joint training only, FREEZE_DETECTOR False).
    _C.MODEL.EBM.ROBUST.RESIDUAL = "energy"
    # Gradient-ascent steps of the current energy from each annotated box that give its residual (step
    # sizes and decay of MODEL.EBM.REFINE; RESIDUAL "energy").
    _C.MODEL.EBM.ROBUST.NUM_STEPS = 10
    # Where that refinement starts (RESIDUAL "energy"): "annotation", or "best_sample", the highest-f of
    # NUM_SAMPLES boxes drawn from the training proposal around the annotation (the energy's mode near it,
    # a prediction not handed the annotation; docs/robust_regression_detection.md).
    _C.MODEL.EBM.ROBUST.RESIDUAL_START = "annotation"
    # Also weight Faster R-CNN's box-regression loss of each foreground proposal by the r of its matched
    # ground truth (joint training of EBMRCNN with FREEZE_DETECTOR False; smooth-L1 box loss only).
    _C.MODEL.EBM.ROBUST.BOX_REG = False

    # The compact CPU backbone (MODEL.BACKBONE.NAME = "build_compact_fpn_backbone"); unused otherwise.
    _C.MODEL.COMPACT_RESNET = CN()
    _C.MODEL.COMPACT_RESNET.WIDTHS = [32, 64, 96, 128]  # channels of res2..res5
    _C.MODEL.COMPACT_RESNET.BLOCKS = [1, 1, 1, 1]  # basic blocks per stage
    _C.MODEL.COMPACT_RESNET.NORM = "GN"

    # The ImageNet MobileNetV2-FPN backbone (MODEL.BACKBONE.NAME = "build_mobilenet_v2_fpn_backbone").
    _C.MODEL.MOBILENET_V2 = CN()
    # "imagenet" (torchvision's weights, downloaded once), a local state dict (torchvision key names; a
    # bare file name is looked up in $EBM_WEIGHTS_DIR), or "" (random initialisation).
    _C.MODEL.MOBILENET_V2.WEIGHTS = "imagenet"
    # Keep the ImageNet layers fixed (BatchNorm folded, eval mode); only the FPN and heads train.
    _C.MODEL.MOBILENET_V2.FROZEN = True

    # The box refiner (MODEL.META_ARCHITECTURE = "EBMBoxRefiner") refines another detector's boxes.
    _C.MODEL.EBM.REFINER = CN()
    # Input detections scoring below this are not refined (nor evaluated); at most
    # TEST.DETECTIONS_PER_IMAGE per image, highest scores first.
    _C.MODEL.EBM.REFINER.MIN_SCORE = 0.0
    # COCO results files with the detections to refine, one per dataset in DATASETS.TEST (like
    # DATASETS.PROPOSAL_FILES_TEST); empty when the test datasets carry their detections.
    _C.DATASETS.DETECTION_FILES_TEST = ()
    add_yolox_config(cfg)
    return cfg


def add_yolox_config(cfg: CN) -> CN:
    """The keys of YOLOX-nano (``MODEL.META_ARCHITECTURE`` ``YOLOX`` / ``EBMYOLOX``, backbone
    ``build_yolox_backbone``; :mod:`ebm_refine.detectron2.yolox`) and of its letterbox input."""
    _C = cfg
    # Letterbox input (YOLOX's preprocessing): > 0 replaces Detectron2's ResizeShortestEdge (MIN/MAX_SIZE_*) in
    # training and testing by a bilinear (OpenCV) resize of the image so both sides fit LETTERBOX_SIZE, one
    # scale r = min(S / h, S / w) for both axes; the model pads the batch to S x S with grey 114. 0 = off.
    _C.INPUT.LETTERBOX_SIZE = 0
    _C.MODEL.YOLOX = CN()
    # Keep the trunk fixed (no gradients, eval mode): the energy head trains on YOLOX's COCO features.
    _C.MODEL.YOLOX.FROZEN = True
    # Detections: score = objectness x best class probability; kept above SCORE_THRESH_TEST, then class-wise
    # NMS at NMS_THRESH_TEST, then at most TEST.DETECTIONS_PER_IMAGE per image (highest scores). The classes
    # are MODEL.ROI_HEADS.NUM_CLASSES (80 for COCO).
    _C.MODEL.YOLOX.SCORE_THRESH_TEST = 0.01
    _C.MODEL.YOLOX.NMS_THRESH_TEST = 0.65
    return cfg


def renamed_key_hint(message: str):
    """For Detectron2's ``Non-existent config key: K`` message: "K was renamed N" if K (or a section above
    it) is in :data:`RENAMED_KEYS`, else None."""
    match = re.search(r"Non-existent (?:config )?key: (\S+)", message)
    if match is None:
        return None
    key = match.group(1)
    for old, new in RENAMED_KEYS.items():
        if key == old or key.startswith(old + "."):
            return f"{key} was renamed {new + key[len(old):]}; use the new name"
    return None


def _check(ok: bool, key: str, rule: str, value) -> None:
    if not ok:
        raise ConfigValueError(f"{key} must be {rule}, got {value!r}")


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_solver_config(cfg: CN) -> None:
    """Raise :class:`ConfigValueError` naming the first ``SOLVER`` value Detectron2's schedule cannot use
    (it would fail with a traceback when training starts, or train on a silently broken schedule)."""
    s = cfg.SOLVER
    _check(_whole(s.MAX_ITER) and s.MAX_ITER >= 1, "SOLVER.MAX_ITER", "a whole number >= 1", s.MAX_ITER)
    _check(all(_whole(v) and v >= 1 for v in s.STEPS) and list(s.STEPS) == sorted(set(s.STEPS)), "SOLVER.STEPS",
           "strictly increasing whole numbers >= 1 (the iterations where the learning rate drops)", tuple(s.STEPS))
    _check(_whole(s.WARMUP_ITERS) and s.WARMUP_ITERS >= 0, "SOLVER.WARMUP_ITERS", "a whole number >= 0", s.WARMUP_ITERS)
    _check(_whole(s.IMS_PER_BATCH) and s.IMS_PER_BATCH >= 1, "SOLVER.IMS_PER_BATCH", "a whole number >= 1",
           s.IMS_PER_BATCH)
    _check(_whole(s.CHECKPOINT_PERIOD) and s.CHECKPOINT_PERIOD >= 1, "SOLVER.CHECKPOINT_PERIOD", "a whole number >= 1",
           s.CHECKPOINT_PERIOD)
    for key in ("BASE_LR", "GAMMA", "MOMENTUM", "WEIGHT_DECAY"):
        value = getattr(s, key)
        _check(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, f"SOLVER.{key}",
               "a finite number >= 0", value)


def validate_ebm_config(cfg: CN) -> None:
    """Raise :class:`ConfigValueError` naming the first ``MODEL.EBM`` value out of range."""
    e = cfg.MODEL.EBM

    def positive(key: str, value) -> None:
        _check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, key, "> 0", value)

    positive("MODEL.EBM.NUM_SAMPLES", e.NUM_SAMPLES)
    _check(len(e.PROPOSAL_SIGMAS) > 0, "MODEL.EBM.PROPOSAL_SIGMAS", "a non-empty list", list(e.PROPOSAL_SIGMAS))
    for name in ("PROPOSAL_SIGMAS", "PROPOSAL_SIGMAS_SIZE"):
        for v in getattr(e, name):
            positive(f"MODEL.EBM.{name}", v)
    if len(e.PROPOSAL_SIGMAS_SIZE):
        _check(len(e.PROPOSAL_SIGMAS_SIZE) == len(e.PROPOSAL_SIGMAS), "MODEL.EBM.PROPOSAL_SIGMAS_SIZE",
               f"empty or as long as PROPOSAL_SIGMAS ({len(e.PROPOSAL_SIGMAS)})", list(e.PROPOSAL_SIGMAS_SIZE))
    positive("MODEL.EBM.NCE_BETA", e.NCE_BETA)
    if e.DETECTOR_PROPOSAL.FILE:
        w = e.DETECTOR_PROPOSAL.WEIGHT
        _check(isinstance(w, (int, float)) and 0 < w < 1, "MODEL.EBM.DETECTOR_PROPOSAL.WEIGHT", "in (0, 1)", w)
        _check(e.LOSS != "nce_plus", "MODEL.EBM.DETECTOR_PROPOSAL.FILE",
               "empty with LOSS nce_plus (its true sample needs a proposal centred on the ground truth)",
               e.DETECTOR_PROPOSAL.FILE)
    positive("MODEL.EBM.LABEL_SIGMA", e.LABEL_SIGMA)
    _check(e.LOSS_WEIGHT >= 0 and math.isfinite(e.LOSS_WEIGHT), "MODEL.EBM.LOSS_WEIGHT", ">= 0", e.LOSS_WEIGHT)
    _check(e.MAX_GT_PER_IMAGE >= 0, "MODEL.EBM.MAX_GT_PER_IMAGE", ">= 0 (0 = all)", e.MAX_GT_PER_IMAGE)
    positive("MODEL.EBM.HEAD.POOLER_RESOLUTION", e.HEAD.POOLER_RESOLUTION)
    _check(e.HEAD.NUM_FC >= 0, "MODEL.EBM.HEAD.NUM_FC", ">= 0", e.HEAD.NUM_FC)
    positive("MODEL.EBM.HEAD.FC_DIM", e.HEAD.FC_DIM)
    _check(e.HEAD.POOLER_SAMPLING_RATIO >= 1, "MODEL.EBM.HEAD.POOLER_SAMPLING_RATIO", ">= 1", e.HEAD.POOLER_SAMPLING_RATIO)
    positive("MODEL.EBM.HEAD.POOLER_CANONICAL_BOX_SIZE", e.HEAD.POOLER_CANONICAL_BOX_SIZE)
    _check(e.REFINE.NUM_STEPS >= 0, "MODEL.EBM.REFINE.NUM_STEPS", ">= 0", e.REFINE.NUM_STEPS)
    positive("MODEL.EBM.REFINE.STEP_SIZE_CENTER", e.REFINE.STEP_SIZE_CENTER)
    positive("MODEL.EBM.REFINE.STEP_SIZE_SIZE", e.REFINE.STEP_SIZE_SIZE)
    _check(0 < e.REFINE.DECAY <= 1, "MODEL.EBM.REFINE.DECAY", "in (0, 1]", e.REFINE.DECAY)
    r = e.ROBUST
    _check(isinstance(r.PERIOD, int) and r.PERIOD >= 1, "MODEL.EBM.ROBUST.PERIOD", "a whole number >= 1", r.PERIOD)
    _check(isinstance(r.WARMUP, int) and r.WARMUP >= 0, "MODEL.EBM.ROBUST.WARMUP", "a whole number >= 0", r.WARMUP)
    _check(isinstance(r.NUM_STEPS, int) and r.NUM_STEPS >= 1, "MODEL.EBM.ROBUST.NUM_STEPS", "a whole number >= 1",
           r.NUM_STEPS)
    _check(r.RESIDUAL in ROBUST_RESIDUALS, "MODEL.EBM.ROBUST.RESIDUAL", f"one of {ROBUST_RESIDUALS}", r.RESIDUAL)
    _check(r.RESIDUAL_START in ROBUST_RESIDUAL_STARTS, "MODEL.EBM.ROBUST.RESIDUAL_START",
           f"one of {ROBUST_RESIDUAL_STARTS}", r.RESIDUAL_START)
    if r.ENABLED and r.RESIDUAL == "detector" and e.FREEZE_DETECTOR:
        raise ConfigValueError("MODEL.EBM.ROBUST.RESIDUAL 'detector' takes residuals from the box regression of "
                               "joint training, which frozen-detector training (MODEL.EBM.FREEZE_DETECTOR True) "
                               "does not run: set FREEZE_DETECTOR False or RESIDUAL 'energy'")
    if r.BOX_REG and not r.ENABLED:
        raise ConfigValueError("MODEL.EBM.ROBUST.BOX_REG weights the box loss by DeepGUM's responsibilities: set "
                               "MODEL.EBM.ROBUST.ENABLED True, or BOX_REG False")
