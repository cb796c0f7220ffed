"""Post-processing of EBM outputs: refined and unrefined boxes go back to the original image together.

Detectron2's ``detector_postprocess`` rescales and clips only ``pred_boxes`` (the refined boxes here).
:func:`ebm_detector_postprocess` applies the same rescaling and clipping to ``pred_boxes_unrefined``, and
keeps exactly the instances Detectron2 would keep for the unrefined boxes alone, so the unrefined AP of
a plugin model equals the AP of the same detector without the plugin.
"""
from __future__ import annotations

from typing import Optional

from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

__all__ = ["ebm_detector_postprocess", "UNREFINED_BOX_FIELD"]

UNREFINED_BOX_FIELD = "pred_boxes_unrefined"


def ebm_detector_postprocess(results: Instances, output_height: int, output_width: int,
                             mask_threshold: float = 0.5, input_scale: Optional[float] = None) -> Instances:
    """``detector_postprocess`` for instances that may also carry ``pred_boxes_unrefined``.

    Args:
        results: raw outputs in the network's input resolution (``results.image_size``).
        output_height, output_width: the original image size (pixels).
        input_scale: input pixels per original pixel on both axes (YOLOX's letterbox factor r), when the
            boxes must go back by exactly 1 / r rather than by the ratio of the (rounded) image sizes.
    Returns:
        Instances in the output resolution: both box sets scaled and clipped; an instance is kept when its
        unrefined box is non-empty there (Detectron2's rule for the detector's own boxes) and its refined box
        is too (refinement keeps a box non-empty, so this drops nothing in practice).
    """
    if input_scale is not None:
        # Detectron2 scales by output size / results.image_size: an unrounded input size gives exactly 1 / r.
        results = Instances((output_height * input_scale, output_width * input_scale), **results.get_fields())
    if results.has(UNREFINED_BOX_FIELD):
        scale_x = output_width / results.image_size[1]
        scale_y = output_height / results.image_size[0]
        # A copy: the refined boxes may share storage with the unrefined ones (e.g. after 0 steps), and
        # detector_postprocess scales pred_boxes in place.
        unrefined = Boxes(results.get(UNREFINED_BOX_FIELD).tensor.clone())
        unrefined.scale(scale_x, scale_y)
        unrefined.clip((output_height, output_width))
        results = Instances(results.image_size, **results.get_fields())
        results.set(UNREFINED_BOX_FIELD, unrefined)
        results.pred_boxes = Boxes(results.pred_boxes.tensor.clone())
        results = results[unrefined.nonempty()]
    return detector_postprocess(results, output_height, output_width, mask_threshold)
