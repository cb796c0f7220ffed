"""``add_ebm_config``: the ``MODEL.EBM`` keys of the EBM ROI head.

Every key is documented where it is defined. Unknown keys in a YAML file or ``--opts`` raise
Detectron2's usual ``KeyError: Non-existent config key`` because the node is not ``new_allowed``.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_ebm_config"]


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
    # Joint training only: stop the EBM loss's gradients at the backbone/FPN features, so the energy
    # head learns on the detector's features without reshaping them. ML-IS can drive f to a sharp
    # peak at the ground truth; letting that reach the backbone destabilises training from scratch.
    _C.MODEL.EBM.DETACH_FEATURES = True

    # The energy network f(x, y), built from ENERGY_HEAD_REGISTRY.
    _C.MODEL.EBM.HEAD = CN()
    _C.MODEL.EBM.HEAD.NAME = "FCEnergyHead"
    # Box-differentiable RoI pooling on MODEL.ROI_HEADS.IN_FEATURES (bins per side, samples per bin side).
    _C.MODEL.EBM.HEAD.POOLER_RESOLUTION = 7
    _C.MODEL.EBM.HEAD.POOLER_SAMPLING_RATIO = 2
    # Fully connected layers after pooling, and their width (reference: 2 x 1024).
    _C.MODEL.EBM.HEAD.NUM_FC = 2
    _C.MODEL.EBM.HEAD.FC_DIM = 1024
    # One scalar per class (reference) or a single class-agnostic energy.
    _C.MODEL.EBM.HEAD.CLS_AGNOSTIC = False

    # Test-time refinement of the final detections by gradient ascent on f (Algorithm S1).
    _C.MODEL.EBM.REFINE = CN()
    _C.MODEL.EBM.REFINE.ENABLED = True
    _C.MODEL.EBM.REFINE.NUM_STEPS = 10
    # Compute f and its box gradient with the head's fused fast path (prepared pyramid pooling, backward
    # written out) when the head has one (FCEnergyHead); same boxes as autograd. False = always autograd.
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

    # The compact CPU backbone (MODEL.BACKBONE.NAME = "build_compact_fpn_backbone"); unused otherwise.
    _C.MODEL.EBM_BACKBONE = CN()
    _C.MODEL.EBM_BACKBONE.WIDTHS = [32, 64, 96, 128]  # channels of res2..res5
    _C.MODEL.EBM_BACKBONE.BLOCKS = [1, 1, 1, 1]  # basic blocks per stage
    _C.MODEL.EBM_BACKBONE.NORM = "GN"
    return cfg
