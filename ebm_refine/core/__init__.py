"""Framework-agnostic EBM core in pure PyTorch (no Detectron2 import).

boxes      parametrisations, relative encoding, IoU
proposal   Gaussian-mixture proposals q(y | y_ref), vectorised sampling with exact log-densities
losses     ML-IS, KLD-IS, NCE / NCE+, IoU-Net confidence
objectives which samples each method needs, and the loss from their scores
roi_pool   RoI Align with gradients w.r.t. the boxes, FPN level assignment
separable_pool  the same RoI Align as two matrix products with a written-out backward (few boxes, small maps)
pyramid_pool    the same RoI Align for many boxes on a feature pyramid, prepared once, written-out box gradient
refine     batched gradient ascent with per-element backtracking (Algorithm S1)
residual_proposal  a detector's errors as extra proposal components (fitted Gaussian mixture, exact density)
regressor  a generic EBM regressor for any target dimension
robust     DeepGUM: Gaussian-uniform mixture on residuals, EM, r-weighted losses
"""
from .boxes import (
    box_area,
    box_iou_aligned,
    box_iou_matrix,
    clip_boxes,
    cxcywh_to_xyxy,
    decode_relative,
    encode_relative,
    valid_box_mask,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)
from .losses import (
    LOSS_NAMES,
    gaussian_label_log_density,
    iou_confidence_loss,
    kld_is_loss,
    ml_is_loss,
    nce_loss,
)
from .objectives import EBM_METHODS, SamplingOptions, ebm_loss, sampling_options
from .proposal import BoxProposal, BoxSamples, GaussianMixtureProposal, best_samples
from .refine import BoxRefinementResult, RefinementResult, gradient_ascent, refine_boxes
from .residual_proposal import ResidualMixture, detection_residuals, fit_residual_mixture
from .regressor import EBMRegressor, mlp
from .robust import DeepGUM, GUMState, fit_gum, gum_responsibilities, weighted_mean
from .roi_pool import MultiLevelBoxPooler, assign_boxes_to_levels, box_roi_align, boxes_to_rois
from .pyramid_pool import PyramidRoIAlign
from .separable_pool import separable_box_roi_align

__all__ = [k for k in dir() if not k.startswith("_")]
