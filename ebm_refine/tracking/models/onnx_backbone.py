"""The frozen backbone run by ONNX Runtime instead of PyTorch (the tracker's ``backbone_runtime: onnxruntime``).

The trunk is exported in memory (``torch.onnx.export``, batch size dynamic) when the tracker is built and
run by an ONNX Runtime CPU session with as many threads as torch uses. Same inputs and outputs as
:meth:`Backbone.forward <ebm_refine.tracking.models.backbone.Backbone.forward>`; the numbers agree up to
float rounding (ONNX Runtime fuses the convolutions and activations in its own kernels), not bit for bit.
Needs the optional ``onnx`` and ``onnxruntime`` packages (``pip install 'ebm_refine[onnx]'``).
"""
from __future__ import annotations

import io
import warnings
from typing import Dict

import torch
from torch import Tensor, nn

from ...utils.errors import UserError
from .backbone import Backbone

__all__ = ["OnnxBackbone"]


class _Outputs(nn.Module):
    """The backbone with a tuple output (what the exporter takes)."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor):
        out = self.backbone(images)
        return out["layer2"], out["layer3"]


class OnnxBackbone:
    """Callable like a frozen :class:`Backbone`: (B, 3, H, W) RGB in [0, 255] -> ``{'layer2', 'layer3'}``.

    Args:
        backbone: the frozen backbone to export (its weights are copied into the ONNX graph).
        threads: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``).
    """

    def __init__(self, backbone: Backbone, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("backbone_runtime: onnxruntime needs the onnxruntime and onnx packages; "
                            "pip install 'ebm_refine[onnx]', or set backbone_runtime: torch") from None
        if not backbone.frozen:
            raise ValueError("only a frozen backbone can run in ONNX Runtime (its weights are copied)")
        buf = io.BytesIO()
        example = torch.zeros(1, 3, 64, 64)
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
            warnings.simplefilter("ignore")
            torch.onnx.export(_Outputs(backbone).eval(), example, buf, input_names=["images"],
                              output_names=["layer2", "layer3"], dynamo=False,
                              dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}})
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads if threads is not None else torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
        self.strides = dict(backbone.strides)
        self.frozen = True

    def __call__(self, images: Tensor) -> Dict[str, Tensor]:
        l2, l3 = self.session.run(None, {"images": images.detach().cpu().contiguous().numpy()})
        return {"layer2": torch.from_numpy(l2), "layer3": torch.from_numpy(l3)}
