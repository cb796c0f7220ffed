"""Building blocks shared by the tracker and the Detectron2 plugin (ImageNet trunks)."""
from .imagenet import IMAGENET_MEAN, IMAGENET_STD, fold_batchnorm, imagenet_trunk, resolve_weights

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "fold_batchnorm", "imagenet_trunk", "resolve_weights"]
