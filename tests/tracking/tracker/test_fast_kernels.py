"""The tracker's fast kernels (channels-last backbone, structured Gram update; and the backbone in ONNX Runtime)
against the plain computation on real video (the first 20 frames of OTB Crossing, the shipped network).

Both paths compute the same numbers up to float32 rounding, not bit for bit. A track feeds each frame's box
into the next frame's crop and each frame's features into the classifier's memory, and its first-frame
conjugate-gradient fit amplifies rounding, so two closed-loop tracks drift apart by a fraction of a pixel
(measured with `norefine`: 0.002-0.005 px in the first tracked frame, up to 0.75 px within 20 frames). What a
frame computes is therefore compared from the same state: in every frame the fast tracker starts from a copy
of the plain tracker's state, and its box must agree within 1e-3 px.
"""
import copy

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def crossing20(tracking_data):
    from ebm_refine.tracking.datasets import load_dataset, read_frame

    seq = load_dataset("otb", str(tracking_data / "otb"), sequences=["Crossing"])[0]
    return [read_frame(f) for f in seq.frames[:20]], seq.init_info()


def _fast_copy(plain, fast):
    """``plain``'s state with ``fast``'s kernels (the classifier's memory copied, the RNG state cloned)."""
    out = copy.copy(plain)
    out._backbone, out.fast_kernels = fast._backbone, True
    out.classifier = copy.deepcopy(plain.classifier)
    out.classifier.structured_gram = True
    out.gen = torch.Generator(device=plain.device).set_state(plain.gen.get_state())
    return out


@pytest.mark.parametrize("params,runtime", [("ebm_fast", "torch"), ("norefine", "torch"), ("ebm_fast", "onnxruntime")])
def test_fast_kernels_give_the_plain_boxes_frame_by_frame(crossing20, params, runtime):
    from ebm_refine.tracking.tracker import EBMAtomTracker

    if runtime == "onnxruntime":
        pytest.importorskip("onnxruntime", reason="backbone_runtime onnxruntime needs pip install 'ebm_refine[onnx]'")
    frames, info = crossing20
    plain = EBMAtomTracker(params, overrides={"fast_kernels": False})
    fast = EBMAtomTracker(params, net=plain.net, overrides={"backbone_runtime": runtime})
    assert fast.fast_kernels and fast._backbone is not plain.net.backbone and not plain.fast_kernels
    plain.initialize(frames[0], info)
    diffs, boxes = [], []
    for f in frames[1:]:
        other = _fast_copy(plain, fast)
        got = other.track(f)["target_bbox"]
        want = plain.track(f)["target_bbox"]
        diffs.append(np.abs(np.subtract(got, want)).max())
        boxes.append(want)
        # The classifier's memory after the update agrees too (structured vs plain Gram product).
        # (relative to its largest entry: small entries are sums that cancel)
        g_fast, g_plain = other.classifier.gram, plain.classifier.gram
        assert float((g_fast - g_plain).abs().max()) < 1e-5 * float(g_plain.abs().max())
    assert max(diffs) < 1e-3, diffs
    assert np.abs(np.diff(np.array(boxes)[:, :2], axis=0)).max() > 0.5  # the target moves: a real track
