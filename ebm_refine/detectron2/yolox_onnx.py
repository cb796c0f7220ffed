"""Weights of YOLOX-nano's ONNX export as a PyTorch state dict of :mod:`.yolox`'s modules.

The export's initializers have no layer names (``onnx::Conv_1178``): each Conv node's weight and bias are
taken in graph order and matched to the PyTorch convolutions in the order the export ran them
(:func:`~.yolox.onnx_conv_order`), checking every shape, group count and stride. Only the ``onnx`` package
is needed (no onnxruntime); nothing in the file is executed. Anything that is not the 416 px YOLOX-nano
export (another network, another input size) is a :class:`YOLOXWeightsError` naming the file.

State-dict keys are those of the ``YOLOX`` meta-architecture (``backbone.*`` the trunk, ``head.*`` the head);
:func:`convert_yolox_onnx` writes them as a Detectron2 checkpoint (``{"model": state_dict}``) that
``MODEL.WEIGHTS`` loads; ``MODEL.WEIGHTS`` may also name the ``.onnx`` file itself
(:class:`~.checkpoint.EBMCheckpointer` converts it in memory).
"""
from __future__ import annotations

import os
from typing import Dict

import torch

from ..utils.errors import UserError
from ..utils.fileio import atomic_save_torch
from .yolox import NUM_OUTPUTS, YOLOXHead, YOLOXTrunk, onnx_conv_order

__all__ = ["YOLOXWeightsError", "read_yolox_onnx", "convert_yolox_onnx", "YOLOX_INPUT_SIZE", "convert_hint",
           "YOLOX_NANO_URL", "missing_weights_message"]

YOLOX_INPUT_SIZE = 416
# Where an online user gets the weights (YOLOX's own release, Apache-2.0); nothing here downloads them.
YOLOX_NANO_URL = "https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_nano.onnx"


class YOLOXWeightsError(UserError):
    """A file that is not the YOLOX-nano ONNX export (or its converted state dict)."""


def convert_hint(onnx_path: str = "../shared/weights/yolox_nano.onnx",
                 output: str = "checkpoints/detectron2/yolox_nano.pth") -> str:
    """The command that makes the converted weights, for error messages."""
    return f"python tools/convert_yolox_onnx.py {onnx_path} --output {output}"


def missing_weights_message(requested: str) -> str:
    """One line for ``MODEL.WEIGHTS`` = ``requested`` not found: where it was looked for (the path itself, then
    :func:`~ebm_refine.utils.resources.find_weights`'s weights folder) and where to get ``yolox_nano.onnx``."""
    from ..utils.resources import find_weights, weights_dir

    places = [os.path.abspath(requested)] if requested else []
    found = find_weights(requested)
    if found != requested:
        places.append(os.path.abspath(found))
    folder = weights_dir()
    where = (f"$EBM_WEIGHTS_DIR ({folder})" if folder is not None else "a folder named by $EBM_WEIGHTS_DIR")
    looked = " and ".join(places) or "nothing"
    return (f"YOLOX-nano weights MODEL.WEIGHTS {requested!r} not found (looked for {looked}): "
            f"put yolox_nano.onnx (YOLOX's release, Apache-2.0: {YOLOX_NANO_URL}) in {where} or pass its path; "
            f"MODEL.WEIGHTS may also be the .pth converted from it ({convert_hint()})")


def _graph(path: str):
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise YOLOXWeightsError(f"{path}: reading an ONNX file needs the 'onnx' package (pip install onnx), "
                                "or pass the converted .pth") from None
    if not os.path.isfile(path):
        raise YOLOXWeightsError(f"{path} not found: expected YOLOX-nano's ONNX export (yolox_nano.onnx)")
    try:
        model = onnx.load(path)
    except Exception as e:  # noqa: BLE001 - protobuf raises many types for a file that is not ONNX
        raise YOLOXWeightsError(f"{path}: not a readable ONNX file ({type(e).__name__}); expected YOLOX-nano's "
                                "ONNX export (yolox_nano.onnx)") from None
    return model.graph, numpy_helper


def _dims(value_info):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


def read_yolox_onnx(path: str) -> Dict[str, torch.Tensor]:
    """The state dict (``backbone.*``, ``head.*``; float32) of YOLOX-nano from its ONNX export at ``path``."""
    graph, numpy_helper = _graph(path)
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    want_in = [1, 3, YOLOX_INPUT_SIZE, YOLOX_INPUT_SIZE]
    if len(inputs) != 1 or _dims(inputs[0]) != want_in:
        got = [_dims(i) for i in inputs]
        raise YOLOXWeightsError(f"{path}: expected YOLOX-nano's export with one input of shape {want_in}, got "
                                f"inputs {got} (another network or another input size)")
    anchors = sum((YOLOX_INPUT_SIZE // s) ** 2 for s in (8, 16, 32))
    outputs = [_dims(o) for o in graph.output]
    if outputs != [[1, anchors, NUM_OUTPUTS]]:
        raise YOLOXWeightsError(f"{path}: expected YOLOX-nano's raw output [1, {anchors}, {NUM_OUTPUTS}], got "
                                f"{outputs} (another network, or an export with decoding?)")
    init = {t.name: t for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    order = onnx_conv_order(YOLOXTrunk(YOLOX_INPUT_SIZE, frozen=False), YOLOXHead())
    if len(convs) != len(order):
        raise YOLOXWeightsError(f"{path}: {len(convs)} convolutions, YOLOX-nano has {len(order)}; expected "
                                "YOLOX-nano's ONNX export")
    state = {}
    for k, (node, (name, conv)) in enumerate(zip(convs, order)):
        attrs = {a.name: a for a in node.attribute}
        groups = attrs["group"].i if "group" in attrs else 1
        stride = list(attrs["strides"].ints) if "strides" in attrs else [1, 1]
        if len(node.input) != 3 or any(x not in init for x in node.input[1:]):
            raise YOLOXWeightsError(f"{path}: convolution {k} ({name}) has no constant weight and bias; "
                                    "expected YOLOX-nano's export with BatchNorm folded")
        weight = torch.from_numpy(numpy_helper.to_array(init[node.input[1]]).copy()).float()
        bias = torch.from_numpy(numpy_helper.to_array(init[node.input[2]]).copy()).float()
        if (tuple(weight.shape) != tuple(conv.weight.shape) or tuple(bias.shape) != tuple(conv.bias.shape)
                or groups != conv.groups or stride != list(conv.stride)):
            raise YOLOXWeightsError(
                f"{path}: convolution {k} ({name}) has weight {tuple(weight.shape)}, groups {groups}, stride "
                f"{stride}; YOLOX-nano has {tuple(conv.weight.shape)}, groups {conv.groups}, stride "
                f"{list(conv.stride)}: not YOLOX-nano's ONNX export")
        state[f"{name}.weight"] = weight
        state[f"{name}.bias"] = bias
    return state


def convert_yolox_onnx(path: str, output: str) -> int:
    """Write the state dict of :func:`read_yolox_onnx` to ``output`` as a Detectron2 checkpoint (atomically).

    Returns the number of tensors written.
    """
    state = read_yolox_onnx(path)
    atomic_save_torch({"model": state, "__author__": f"converted from {os.path.basename(path)}"}, output)
    return len(state)
