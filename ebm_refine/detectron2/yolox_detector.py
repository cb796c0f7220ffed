"""``YOLOX`` and ``EBMYOLOX``: YOLOX-nano as a Detectron2 meta-architecture, and with an energy head.

* ``YOLOX`` (inference only; the COCO-trained weights come from the ONNX export, :mod:`.yolox_onnx`): Detectron2
  inputs (``image`` letterbox-resized by the config's mapper, BGR 0..255; ``height``, ``width`` of the original)
  -> ``[{"instances": Instances}]`` in original pixels with ``pred_boxes`` (xyxy), ``scores`` (objectness x best
  class probability) and ``pred_classes`` (contiguous 0..79). Post-processing: score > ``SCORE_THRESH_TEST``,
  class-wise NMS at ``NMS_THRESH_TEST``, the ``TEST.DETECTIONS_PER_IMAGE`` best, boxes divided by the letterbox
  factor r and clipped to the image (YOLOX's own demo post-processing).
* ``EBMYOLOX``: the same detector plus ``EnergyROIHeads`` on the frozen trunk's p3..p5, refining YOLOX's own
  detections in the same forward pass (as ``EBMRCNN`` does for Faster R-CNN): ``pred_boxes`` refined,
  ``pred_boxes_unrefined`` YOLOX's, ``pred_energies``, scores and classes unchanged. Training (frozen YOLOX)
  returns ``{"loss_ebm"}`` only.

Both refuse ``MODEL.WEIGHTS`` that leave YOLOX tensors unloaded (e.g. a refiner's checkpoint, which has no YOLOX
head), and training refuses a YOLOX whose weights never loaded, unless ``MODEL.EBM.ALLOW_UNTRAINED_DETECTOR``
(``EBMYOLOX``). The energy head may come from a separate checkpoint
  (``MODEL.EBM.HEAD.WEIGHTS``, e.g. a COCO-Refine YOLOX refiner's ``model_final.pth``).
"""
from __future__ import annotations

import logging
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn
from torchvision.ops import batched_nms

from ..utils.errors import UserError
from .config import ConfigValueError
from .data import letterbox_scale
from .meta_arch import ENERGY_HEAD_PREFIX, UntrainedDetectorError, freeze_detector
from .postprocessing import ebm_detector_postprocess
from .yolox import YOLOXHead, YOLOXTrunk, anchor_grid, decode_boxes

__all__ = ["YOLOX", "EBMYOLOX", "check_letterbox_inputs"]

logger = logging.getLogger(__name__)


def check_letterbox_inputs(batched_inputs: List[dict], size: int) -> None:
    """Raise :class:`UserError` unless every ``image`` is the letterbox resize of its ``height`` x ``width``."""
    for x in batched_inputs:
        h, w = x["image"].shape[-2:]
        oh, ow = x.get("height", h), x.get("width", w)
        r = letterbox_scale(oh, ow, size)
        if (h, w) != (int(oh * r), int(ow * r)):
            raise UserError(f"YOLOX expects images letterbox-resized to fit {size} px ({int(oh * r)}x{int(ow * r)} "
                            f"for a {oh}x{ow} image), got {h}x{w}: map the inputs with the config's "
                            "CheckedDatasetMapper (INPUT.LETTERBOX_SIZE) or EBMPredictor")


@META_ARCH_REGISTRY.register()
class YOLOX(nn.Module):
    """YOLOX-nano detector (see module docstring).

    Args:
        backbone: a :class:`~.yolox.YOLOXTrunk`.
        head: the :class:`~.yolox.YOLOXHead` on its p3..p5.
        score_thresh, nms_thresh: detection score threshold and class-wise NMS IoU.
        max_detections: detections kept per image.
    """

    @configurable
    def __init__(self, *, backbone: YOLOXTrunk, head: YOLOXHead, score_thresh: float = 0.01,
                 nms_thresh: float = 0.65, max_detections: int = 100):
        super().__init__()
        if not isinstance(backbone, YOLOXTrunk):
            raise UserError(f"MODEL.META_ARCHITECTURE YOLOX needs MODEL.BACKBONE.NAME 'build_yolox_backbone', got "
                            f"{type(backbone).__name__}")
        self.backbone = backbone
        self.head = head
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.max_detections = max_detections
        self.register_buffer("_device_marker", torch.zeros(0), False)
        for p in self.head.parameters():  # converted COCO weights; never trained here
            p.requires_grad_(False)
        self.allow_untrained_detector = False
        self.detector_weights_loaded = False
        self.register_load_state_dict_post_hook(YOLOX._after_load_state_dict)

    @staticmethod
    def _after_load_state_dict(module: "YOLOX", incompatible) -> None:
        missing = [k for k in incompatible.missing_keys if not k.startswith(ENERGY_HEAD_PREFIX)]
        module.detector_weights_loaded = not missing
        if missing and not module.allow_untrained_detector:
            hint = ("; a trained energy head goes in MODEL.EBM.HEAD.WEIGHTS" if
                    any(k.startswith("head.") for k in missing) and not any(k.startswith("backbone.") for k in missing)
                    else "")
            raise UntrainedDetectorError(
                f"{type(module).__name__}: {len(missing)} YOLOX tensors did not load (e.g. {missing[0]}): MODEL.WEIGHTS "
                f"must be YOLOX-nano's weights, the converted yolox_nano.pth or yolox_nano.onnx{hint}")

    @classmethod
    def from_config(cls, cfg) -> dict:
        y = cfg.MODEL.YOLOX
        if not 0 <= y.SCORE_THRESH_TEST < 1:
            raise ConfigValueError(f"MODEL.YOLOX.SCORE_THRESH_TEST must be in [0, 1), got {y.SCORE_THRESH_TEST!r}")
        if not 0 < y.NMS_THRESH_TEST <= 1:
            raise ConfigValueError(f"MODEL.YOLOX.NMS_THRESH_TEST must be in (0, 1], got {y.NMS_THRESH_TEST!r}")
        if cfg.TEST.DETECTIONS_PER_IMAGE < 1:
            raise ConfigValueError(f"TEST.DETECTIONS_PER_IMAGE must be >= 1, got {cfg.TEST.DETECTIONS_PER_IMAGE!r}")
        backbone = build_backbone(cfg)
        return {"backbone": backbone, "head": YOLOXHead(cfg.MODEL.ROI_HEADS.NUM_CLASSES),
                "score_thresh": y.SCORE_THRESH_TEST, "nms_thresh": y.NMS_THRESH_TEST,
                "max_detections": cfg.TEST.DETECTIONS_PER_IMAGE}

    @property
    def device(self) -> torch.device:
        return self._device_marker.device

    def train(self, mode: bool = True) -> "YOLOX":
        super().train(mode)
        self.head.train(False)  # fixed COCO weights: the detector always runs as at test time
        return self

    def preprocess_image(self, batched_inputs: List[dict]) -> ImageList:
        """Letterboxed BGR images -> an ImageList padded to the square with grey 114."""
        check_letterbox_inputs(batched_inputs, self.backbone.input_size)
        images = [x["image"].to(self.device).float() for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility, pad_value=self.backbone.pad_value,
                                      padding_constraints=self.backbone.padding_constraints)

    def detect(self, features: Dict[str, Tensor], image_sizes) -> List[Instances]:
        """Detections per image in input pixels (``Instances`` of the unpadded input size)."""
        maps = [features[f] for f in self.backbone._out_features]
        raw = self.head(maps)
        grid = anchor_grid([m.shape[-2:] for m in maps], [self.backbone._out_feature_strides[f]
                                                         for f in self.backbone._out_features], raw.device)
        boxes = decode_boxes(raw, grid)
        cls_prob, classes = raw[..., 5:].max(dim=-1)
        scores = raw[..., 4] * cls_prob
        out = []
        for b, s, c, size in zip(boxes, scores, classes, image_sizes):
            keep = s > self.score_thresh
            b, s, c = b[keep], s[keep], c[keep]
            keep = batched_nms(b, s, c, self.nms_thresh)[: self.max_detections]  # sorted by score
            inst = Instances(tuple(size))
            inst.pred_boxes = Boxes(b[keep])
            inst.scores = s[keep]
            inst.pred_classes = c[keep]
            out.append(inst)
        return out

    def forward(self, batched_inputs: List[dict]):
        if self.training:
            raise UserError("YOLOX is inference-only here (COCO weights converted from its ONNX export); train an "
                            "energy head on its features with EBMYOLOX or a COCO-Refine YOLOX config")
        return self.inference(batched_inputs)

    def inference(self, batched_inputs: List[dict], do_postprocess: bool = True):
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        results = self.refine(features, self.detect(features, images.image_sizes))
        if not do_postprocess:
            return results
        return self.postprocess(results, batched_inputs, self.backbone.input_size)

    def refine(self, features: Dict[str, Tensor], detections: List[Instances]) -> List[Instances]:
        """Nothing to refine in the plain detector (``EBMYOLOX`` overrides)."""
        return detections

    @staticmethod
    def postprocess(results: List[Instances], batched_inputs: List[dict], size: int) -> List[dict]:
        """Boxes (and unrefined boxes) divided by each image's letterbox factor, clipped to the original image."""
        out = []
        for inst, x in zip(results, batched_inputs):
            h, w = x.get("height", inst.image_size[0]), x.get("width", inst.image_size[1])
            out.append({"instances": ebm_detector_postprocess(inst, h, w, input_scale=letterbox_scale(h, w, size))})
        return out


@META_ARCH_REGISTRY.register()
class EBMYOLOX(YOLOX):
    """YOLOX + ``EnergyROIHeads`` on its frozen p3..p5: detect and refine in one pass (module docstring).

    Extra keyword arguments: ``roi_heads`` (an :class:`~.refiner.EnergyROIHeads`), ``allow_untrained_detector``,
    ``energy_head_weights`` (a checkpoint whose energy head :class:`~.checkpoint.EBMCheckpointer` loads after
    ``MODEL.WEIGHTS``; "" = none).
    """

    @configurable
    def __init__(self, *, roi_heads: nn.Module, allow_untrained_detector: bool = False,
                 energy_head_weights: str = "", **kwargs):
        super().__init__(**kwargs)
        from .refiner import EnergyROIHeads

        if not isinstance(roi_heads, EnergyROIHeads):
            raise UserError(f"MODEL.META_ARCHITECTURE EBMYOLOX needs MODEL.ROI_HEADS.NAME 'EnergyROIHeads', got "
                            f"{type(roi_heads).__name__}")
        self.roi_heads = roi_heads
        self.allow_untrained_detector = bool(allow_untrained_detector)
        self.energy_head_weights = energy_head_weights
        n = freeze_detector(self)
        logger.info("EBMYOLOX: YOLOX is frozen, only the energy head trains (%d parameters)", n)

    @classmethod
    def from_config(cls, cfg) -> dict:
        if not cfg.MODEL.EBM.FREEZE_DETECTOR or not cfg.MODEL.YOLOX.FROZEN:
            raise ConfigValueError("EBMYOLOX trains the energy head on frozen YOLOX features: set "
                                   "MODEL.EBM.FREEZE_DETECTOR True and MODEL.YOLOX.FROZEN True")
        ret = super().from_config(cfg)
        ret.update(roi_heads=build_roi_heads(cfg, ret["backbone"].output_shape()),
                   allow_untrained_detector=cfg.MODEL.EBM.ALLOW_UNTRAINED_DETECTOR,
                   energy_head_weights=cfg.MODEL.EBM.HEAD.WEIGHTS)
        return ret

    def train(self, mode: bool = True) -> "EBMYOLOX":
        super().train(mode)
        self.backbone.train(False)
        self.roi_heads.train(False)
        self.roi_heads.energy_head.train(mode)
        return self

    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        if not self.detector_weights_loaded and not self.allow_untrained_detector:
            raise UntrainedDetectorError(
                "EBMYOLOX: training the energy head on a YOLOX whose weights were never loaded; set MODEL.WEIGHTS "
                "to the converted yolox_nano.pth (tools/convert_yolox_onnx.py) or yolox_nano.onnx, or "
                "MODEL.EBM.ALLOW_UNTRAINED_DETECTOR True")
        images = self.preprocess_image(batched_inputs)
        targets = [x["instances"].to(self.device) for x in batched_inputs]
        with torch.no_grad():
            features = self.backbone(images.tensor)
        return self.roi_heads.ebm_loss_dict(features, targets)

    def refine(self, features: Dict[str, Tensor], detections: List[Instances]) -> List[Instances]:
        return self.roi_heads(features, detections)
