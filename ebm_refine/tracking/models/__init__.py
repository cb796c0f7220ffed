"""Networks of the EBM tracker: frozen backbone, energy box estimator, and the two combined.

backbone        ResNet-18 / ResNet-50 / MobileNetV2 trunks exposing ``layer2`` (stride 8) and ``layer3`` (stride 16)
box_estimator   ATOM's IoU-Net layout with a scalar output, used as the energy f(x, y)
network         :class:`TrackerNet` (backbone + estimator), training losses (also per pair, with DeepGUM's
                refinement residuals), self-contained checkpoints
"""
from .backbone import BACKBONES, Backbone, build_backbone
from .box_estimator import EnergyBoxEstimator
from .network import (DEFAULT_NET_CONFIG, LOSS_METHODS, TrackerNet, box_estimation_loss, build_tracker_net,
                      load_net, pair_losses, refinement_residuals, save_net)

__all__ = ["BACKBONES", "Backbone", "build_backbone", "EnergyBoxEstimator", "DEFAULT_NET_CONFIG", "LOSS_METHODS",
           "TrackerNet", "box_estimation_loss", "build_tracker_net", "load_net", "pair_losses", "refinement_residuals",
           "save_net"]
