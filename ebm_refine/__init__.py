"""ebm_refine: energy-based bounding-box refinement (Gustafsson et al., ECCV 2020).

Sub-packages
------------
core         framework-agnostic EBM pieces in pure PyTorch (boxes, proposal sampler, losses, DeepGUM,
             box-differentiable RoI pooling and its fused fast paths, gradient-ascent refiner, EBM regressor).
detectron2   the Detectron2 plugin: EBMRCNN / EBMROIHeads (refining Faster R-CNN), EBMBoxRefiner (refining any
             detector's COCO results), energy heads, trainer, evaluators, datasets, configs.
tracking     the ATOM-style EBM tracker (tracker, models, training) and the tracking toolkit (datasets,
             evaluation in three protocols, TrackingNet packer).
evaluation   the multi-run significance protocol (paired per-sample errors, Wilcoxon, median intervals).
models       building blocks shared by tracker and plugin (ImageNet trunks).
data         the synthetic detection benchmark's generator.
toy          the paper's 1-D regression problems, used to validate the losses.
cli          the ``ebm-refine <command>`` console script (demo, eval-tracking, train-tracker, train-net,
             refine-detections); visualization: what the demo draws.
utils        shipped resources, atomic file writing, the command-line error convention, images.
"""

__version__ = "0.1.0"
