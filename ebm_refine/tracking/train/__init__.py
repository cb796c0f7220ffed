"""Training pipeline of the tracker's box estimator (``ltr``-style pair sampling, checkpoints, DDP).

data     the :class:`TrainSequence` interface, adapters (dataset loaders, COCO images), the pair sampler
loss     the box estimator's training loss and :class:`BoxEstimationActor` (network + loss, what DDP wraps)
config   the training config: defaults, strict checks, loading, the data sources it names
trainer  :func:`train` (single process or one DDP rank), checkpoints and resume
robust   DeepGUM outlier-robust training: the ``robust`` config section and one EM iteration
outlier_benchmark  plain vs DeepGUM training under annotation noise, tracked on clean sequences (import by name)
"""
from .data import (DEFAULT_PROCESSING, FileSequence, ImageSequence, IndexSampler, PairDataset, TrainSequence,
                   coco_sequences)
from .loss import BoxEstimationActor, box_estimation_loss, pair_losses, refinement_residuals
from .robust import DEFAULT_ROBUST
from .config import DEFAULT_TRAIN, build_sources, check_train_config, load_train_config
from .trainer import TrainingDivergedError, train

__all__ = ["DEFAULT_PROCESSING", "FileSequence", "ImageSequence", "IndexSampler", "PairDataset", "TrainSequence",
           "coco_sequences", "DEFAULT_TRAIN", "TrainingDivergedError", "build_sources", "check_train_config",
           "load_train_config", "train", "BoxEstimationActor", "box_estimation_loss",
           "pair_losses", "refinement_residuals", "DEFAULT_ROBUST"]
