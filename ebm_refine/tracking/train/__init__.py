"""Training pipeline of the tracker's box estimator (``ltr``-style pair sampling, checkpoints, DDP).

data     the :class:`TrainSequence` interface, adapters (dataset loaders, COCO images), the pair sampler
trainer  :func:`train` (single process or one DDP rank), config loading, data-source construction
robust   DeepGUM outlier-robust training: the ``robust`` config section and one EM iteration
"""
from .data import (DEFAULT_PROCESSING, FileSequence, ImageSequence, IndexSampler, PairDataset, TrainSequence,
                   coco_sequences)
from .trainer import DEFAULT_TRAIN, TrainingDivergedError, build_sources, check_train_config, load_train_config, train

__all__ = ["DEFAULT_PROCESSING", "FileSequence", "ImageSequence", "IndexSampler", "PairDataset", "TrainSequence",
           "coco_sequences", "DEFAULT_TRAIN", "TrainingDivergedError", "build_sources", "check_train_config",
           "load_train_config", "train"]
