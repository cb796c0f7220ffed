"""YOLOX-nano in PyTorch: the CSPDarknet-nano + PAFPN trunk (a Detectron2 backbone) and the decoupled head.

Written from the graph of the COCO-trained ONNX export (``yolox_nano.onnx``; :mod:`.yolox_onnx` reads its
weights) and the YOLOX paper's description. What the graph shows:

* input ``1 x 3 x 416 x 416``, **BGR pixels 0..255** without normalisation, letterboxed: resized with
  bilinear interpolation (OpenCV's) so that both sides fit 416 (``r = min(416 / h, 416 / w)``, new size
  ``int(h r) x int(w r)``), placed top-left on a 416 x 416 canvas of grey 114 (this reproduces the shared
  detections file to its rounding; other channel orders, pads or centring do not);
* every convolution carries a bias and is followed by SiLU (BatchNorm folded into the weights by the export),
  depthwise-separable 3 x 3 convs (nano), a Focus stem (space-to-depth in the order top-left, bottom-left,
  top-right, bottom-right, then a 3 x 3 conv 12 -> 16), stages of widths 32 / 64 / 128 / 256 with 1 / 3 / 3 / 1
  bottlenecks, an SPP block (max pools 5, 9, 13) before the last stage (whose bottleneck has no shortcut);
* a PAFPN (top-down with nearest 2x upsampling, bottom-up with stride-2 depthwise convs; CSP blocks without
  shortcuts) giving 64 / 128 / 256 channels at strides 8 / 16 / 32;
* per level a decoupled head: a 1 x 1 stem to 64 channels, then two branches of two depthwise-separable convs,
  one for the 80 class logits, one for the 4 box offsets and the objectness logit; the output per anchor
  (one per cell, 3549 at 416 px) is ``[dx, dy, log w, log h, sigmoid(obj), sigmoid(cls) x 80]``.

Decoding (:func:`decode_boxes`): centre ``(dx + col, dy + row) * stride``, size ``exp(log w, log h) * stride``.

The backbone's outputs ``p3``, ``p4``, ``p5`` are the head's stem outputs: the PAFPN maps projected to 64
channels each by the detector's own (COCO-trained) 1 x 1 stems. They are what every head branch reads, and
having one width on all levels is what a shared RoI energy head needs (:mod:`.energy`).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import Tensor, nn

from ..utils.errors import UserError

__all__ = ["YOLOXTrunk", "YOLOXHead", "build_yolox_backbone", "decode_boxes", "onnx_conv_order",
           "LETTERBOX_PAD", "NANO_STRIDES", "NUM_OUTPUTS"]

# YOLOX's letterbox grey: the value of padded input pixels (0..255, all channels).
LETTERBOX_PAD = 114.0
NANO_STRIDES = (8, 16, 32)
# Per anchor: 4 box offsets, objectness, 80 COCO classes.
NUM_OUTPUTS = 85
_HEAD_WIDTH = 64


class ConvSiLU(nn.Sequential):
    """Conv (with bias: BatchNorm folded) + SiLU; 'same' padding."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=True)
        self.act = nn.SiLU(inplace=True)


class SeparableConv(nn.Sequential):
    """Depthwise 3 x 3 (stride 1 or 2) + pointwise 1 x 1, each with SiLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.depthwise = ConvSiLU(cin, cin, 3, stride, groups=cin)
        self.pointwise = ConvSiLU(cin, cout, 1)


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool):
        super().__init__()
        self.reduce = ConvSiLU(c, c, 1)
        self.spatial = SeparableConv(c, c)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.spatial(self.reduce(x))
        return x + y if self.shortcut else y


class CSPBlock(nn.Module):
    """Cross-stage partial block: two 1 x 1 halves, bottlenecks on one, concatenated and fused."""

    def __init__(self, cin: int, cout: int, depth: int, shortcut: bool):
        super().__init__()
        hidden = cout // 2
        self.main = ConvSiLU(cin, hidden, 1)
        self.side = ConvSiLU(cin, hidden, 1)
        self.blocks = nn.Sequential(*[Bottleneck(hidden, shortcut) for _ in range(depth)])
        self.fuse = ConvSiLU(2 * hidden, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        # The export's order (main, side, blocks): the converter maps convs in execution order.
        main = self.main(x)
        side = self.side(x)
        return self.fuse(torch.cat([self.blocks(main), side], dim=1))


class SPPBlock(nn.Module):
    def __init__(self, c: int, kernels: Sequence[int] = (5, 9, 13)):
        super().__init__()
        self.reduce = ConvSiLU(c, c // 2, 1)
        self.kernels = tuple(kernels)
        self.expand = ConvSiLU(c // 2 * (len(self.kernels) + 1), c, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduce(x)
        pooled = [F.max_pool2d(x, k, 1, k // 2) for k in self.kernels]
        return self.expand(torch.cat([x, *pooled], dim=1))


def space_to_depth(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2) in the Focus order: top-left, bottom-left, top-right, bottom-right."""
    return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], dim=1)


class YOLOXTrunk(Backbone):
    """CSPDarknet-nano + PAFPN + the head's per-level 1 x 1 stems (see the module docstring).

    ``forward``: (B, 3, H, W) BGR 0..255 (H, W multiples of 32) -> ``{"p3", "p4", "p5"}``, each
    (B, 64, H / s, W / s) for s = 8, 16, 32.

    Args:
        input_size: the letterbox square side (pixels); batches are padded to it with grey 114.
        frozen: no gradients and always eval mode (the energy head trains on fixed features).
    """

    def __init__(self, input_size: int = 416, frozen: bool = True):
        super().__init__()
        if input_size <= 0 or input_size % 32:
            raise UserError(f"the YOLOX input size must be a positive multiple of 32, got {input_size}")
        self.input_size = int(input_size)
        w = (16, 32, 64, 128, 256)
        self.stem = ConvSiLU(12, w[0], 3)
        self.dark2 = nn.Sequential(SeparableConv(w[0], w[1], 2), CSPBlock(w[1], w[1], 1, True))
        self.dark3 = nn.Sequential(SeparableConv(w[1], w[2], 2), CSPBlock(w[2], w[2], 3, True))
        self.dark4 = nn.Sequential(SeparableConv(w[2], w[3], 2), CSPBlock(w[3], w[3], 3, True))
        self.dark5 = nn.Sequential(SeparableConv(w[3], w[4], 2), SPPBlock(w[4]), CSPBlock(w[4], w[4], 1, False))
        # PAFPN
        self.lateral5 = ConvSiLU(w[4], w[3], 1)
        self.top_down4 = CSPBlock(2 * w[3], w[3], 1, False)
        self.lateral4 = ConvSiLU(w[3], w[2], 1)
        self.top_down3 = CSPBlock(2 * w[2], w[2], 1, False)
        self.down3 = SeparableConv(w[2], w[2], 2)
        self.bottom_up4 = CSPBlock(2 * w[2], w[3], 1, False)
        self.down4 = SeparableConv(w[3], w[3], 2)
        self.bottom_up5 = CSPBlock(2 * w[3], w[4], 1, False)
        # The detection head's stems (see the module docstring for why they belong to the trunk here).
        self.stems = nn.ModuleList([ConvSiLU(c, _HEAD_WIDTH, 1) for c in (w[2], w[3], w[4])])
        self._out_features = ["p3", "p4", "p5"]
        self._out_feature_channels = {f: _HEAD_WIDTH for f in self._out_features}
        self._out_feature_strides = dict(zip(self._out_features, NANO_STRIDES))
        self.frozen = frozen
        if frozen:
            self.eval()
            for p in self.parameters():
                p.requires_grad_(False)
        # Channels-last: PyTorch's CPU convolutions are about 1.5x faster on this trunk in that layout.
        self.to(memory_format=torch.channels_last)

    # Detectron2's ImageList pads every batch to the letterbox square, with YOLOX's grey.
    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"square_size": self.input_size}

    @property
    def size_divisibility(self) -> int:
        return 32

    pad_value = LETTERBOX_PAD
    # The COCO weights come with the model's checkpoint (MODEL.WEIGHTS), not at construction.
    weights_from_checkpoint = True

    def train(self, mode: bool = True) -> "YOLOXTrunk":
        return super().train(False if self.frozen else mode)

    def pafpn(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(B, 3, H, W) -> PAFPN maps at strides 8, 16, 32 with 64, 128, 256 channels."""
        c2 = self.dark2(self.stem(space_to_depth(x)))
        c3 = self.dark3(c2)
        c4 = self.dark4(c3)
        c5 = self.dark5(c4)
        f5 = self.lateral5(c5)
        f4 = self.lateral4(self.top_down4(torch.cat([F.interpolate(f5, scale_factor=2.0, mode="nearest"), c4], 1)))
        p3 = self.top_down3(torch.cat([F.interpolate(f4, scale_factor=2.0, mode="nearest"), c3], 1))
        p4 = self.bottom_up4(torch.cat([self.down3(p3), f4], 1))
        p5 = self.bottom_up5(torch.cat([self.down4(p4), f5], 1))
        return p3, p4, p5

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise UserError(f"YOLOX needs input sides divisible by 32, got {tuple(x.shape[-2:])}")
        maps = self.pafpn(x.contiguous(memory_format=torch.channels_last))
        return {f: stem(m) for f, stem, m in zip(self._out_features, self.stems, maps)}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {f: ShapeSpec(channels=self._out_feature_channels[f], stride=self._out_feature_strides[f])
                for f in self._out_features}


class YOLOXHead(nn.Module):
    """The decoupled head after the stems: per level, a class branch and a box + objectness branch.

    ``forward(features)``: the trunk's ``[p3, p4, p5]`` -> (B, A, 85) with A = sum of H_l W_l (levels in
    order, cells row-major): ``[dx, dy, log w, log h, sigmoid(obj), sigmoid(cls_1..80)]``, the ONNX output.
    """

    def __init__(self, num_classes: int = 80, width: int = _HEAD_WIDTH, num_levels: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.cls_branches = nn.ModuleList(
            [nn.Sequential(SeparableConv(width, width), SeparableConv(width, width)) for _ in range(num_levels)])
        self.reg_branches = nn.ModuleList(
            [nn.Sequential(SeparableConv(width, width), SeparableConv(width, width)) for _ in range(num_levels)])
        self.cls_preds = nn.ModuleList([nn.Conv2d(width, num_classes, 1) for _ in range(num_levels)])
        self.reg_preds = nn.ModuleList([nn.Conv2d(width, 4, 1) for _ in range(num_levels)])
        self.obj_preds = nn.ModuleList([nn.Conv2d(width, 1, 1) for _ in range(num_levels)])
        self.to(memory_format=torch.channels_last)  # as the trunk's outputs

    def forward(self, features: List[Tensor]) -> Tensor:
        out = []
        for i, x in enumerate(features):
            cls = self.cls_preds[i](self.cls_branches[i](x))
            reg_feat = self.reg_branches[i](x)
            level = torch.cat([self.reg_preds[i](reg_feat), self.obj_preds[i](reg_feat).sigmoid(), cls.sigmoid()], 1)
            out.append(level.flatten(2))
        return torch.cat(out, dim=2).transpose(1, 2)


def onnx_conv_order(trunk: YOLOXTrunk, head: YOLOXHead) -> List[Tuple[str, nn.Conv2d]]:
    """(state-dict prefix, conv) of every convolution in the order the ONNX export runs them.

    The trunk's modules are registered in execution order; the export interleaves each level's stem with
    that level's head (stem, class branch, class conv, box branch, box conv, objectness conv).
    """
    stems = {id(m) for m in trunk.stems.modules()}
    order = [(f"backbone.{n}", m) for n, m in trunk.named_modules() if isinstance(m, nn.Conv2d) and id(m) not in stems]
    for i in range(len(trunk.stems)):
        order.append((f"backbone.stems.{i}.conv", trunk.stems[i].conv))
        parts = [("cls_branches", head.cls_branches[i]), ("cls_preds", head.cls_preds[i]),
                 ("reg_branches", head.reg_branches[i]), ("reg_preds", head.reg_preds[i]),
                 ("obj_preds", head.obj_preds[i])]
        for name, module in parts:
            for n, m in module.named_modules():
                if isinstance(m, nn.Conv2d):
                    order.append((f"head.{name}.{i}" + (f".{n}" if n else ""), m))
    return order


def anchor_grid(sizes: Sequence[Tuple[int, int]], strides: Sequence[int], device=None) -> Tensor:
    """(A, 3) ``[col, row, stride]`` of every anchor, levels in order, cells row-major."""
    rows = []
    for (h, w), s in zip(sizes, strides):
        yy, xx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        rows.append(torch.stack([xx.reshape(-1), yy.reshape(-1), torch.full((h * w,), s, device=device)], 1))
    return torch.cat(rows).float()


def decode_boxes(raw: Tensor, grid: Tensor) -> Tensor:
    """(B, A, 85) head output, (A, 3) :func:`anchor_grid` -> (B, A, 4) xyxy boxes in input pixels."""
    stride = grid[:, 2:]
    centre = (raw[..., :2] + grid[:, :2]) * stride
    half = torch.exp(raw[..., 2:4]) * stride / 2
    return torch.cat([centre - half, centre + half], dim=-1)


@BACKBONE_REGISTRY.register()
def build_yolox_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """YOLOX-nano's trunk (``MODEL.YOLOX``; input size ``INPUT.LETTERBOX_SIZE``), outputs p3..p5."""
    if input_shape.channels != 3:
        raise UserError(f"YOLOX takes 3-channel images, got {input_shape.channels}")
    if cfg.INPUT.LETTERBOX_SIZE <= 0:
        raise UserError("MODEL.BACKBONE.NAME build_yolox_backbone needs YOLOX's letterbox input: set "
                        "INPUT.LETTERBOX_SIZE (416 for the COCO-trained YOLOX-nano)")
    if cfg.INPUT.FORMAT != "BGR":
        raise UserError(f"YOLOX reads BGR images: set INPUT.FORMAT 'BGR', got {cfg.INPUT.FORMAT!r}")
    if list(cfg.MODEL.PIXEL_MEAN) != [0.0, 0.0, 0.0] or list(cfg.MODEL.PIXEL_STD) != [1.0, 1.0, 1.0]:
        raise UserError("YOLOX reads raw 0..255 pixels: set MODEL.PIXEL_MEAN [0, 0, 0] and MODEL.PIXEL_STD [1, 1, 1]")
    return YOLOXTrunk(cfg.INPUT.LETTERBOX_SIZE, cfg.MODEL.YOLOX.FROZEN)
