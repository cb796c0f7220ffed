"""ebm_refine: energy-based bounding-box refinement.

Sub-packages
------------
core       framework-agnostic EBM pieces in pure PyTorch (boxes, proposal sampler, losses,
           box-differentiable RoI pooling, gradient-ascent refiner, generic EBM regressor).
toy        the paper's 1-D regression problems, used to validate the losses.
"""

__version__ = "0.1.0"
