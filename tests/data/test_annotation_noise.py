"""Annotation noise (ebm_refine.data.annotation_noise): the kinds of wrong boxes and the per-frame noise of
tracker training."""
from __future__ import annotations

import random

import numpy as np
import pytest

from ebm_refine.data.annotation_noise import AnnotationNoise, alter_box


def _cxcywh(b):
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]


def test_each_kind_alters_the_box_as_documented():
    box = [200.0, 150.0, 240.0, 230.0]  # 40 x 80, centre (220, 190), well inside 640 x 480
    for seed in range(20):
        cx, cy, w, h = _cxcywh(alter_box(box, "shift", random.Random(seed), 640, 480))
        assert (w, h) == pytest.approx((40, 80))
        assert 0.5 * 40 <= abs(cx - 220) <= 40 and 0.5 * 80 <= abs(cy - 190) <= 80
        cx, cy, w, h = _cxcywh(alter_box(box, "scale", random.Random(seed), 640, 480))
        assert (cx, cy) == pytest.approx((220, 190)) and w / 40 == pytest.approx(h / 80)
        assert 1.8 <= max(w / 40, 40 / w) <= 2.5
        x1, y1, x2, y2 = alter_box(box, "random", random.Random(seed), 640, 480, ((10, 100), (20, 200)))
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480
        assert 10 - 1e-6 <= x2 - x1 <= 100 + 1e-6 and 20 - 1e-6 <= y2 - y1 <= 200 + 1e-6
    # Boxes are clipped to the image and keep 4 px a side.
    x1, y1, x2, y2 = alter_box([0.0, 0.0, 3.0, 3.0], "scale", random.Random(0), 20, 20)
    assert x1 >= 0 and y1 >= 0 and x2 - x1 >= 4 and y2 - y1 >= 4
    with pytest.raises(ValueError, match="size_range"):
        alter_box(box, "random", random.Random(0), 640, 480)
    with pytest.raises(ValueError, match="unknown"):
        alter_box(box, "swap", random.Random(0), 640, 480)


def test_tracker_noise_is_a_property_of_the_frame_and_hits_the_fraction():
    noise = AnnotationNoise(0.4, "shift_scale", seed=1)
    box = [100.0, 100.0, 150.0, 180.0]
    flags = [noise(f"0/{s}", i, box, 640, 480)[1] for s in range(50) for i in range(40)]
    assert np.mean(flags) == pytest.approx(0.4, abs=0.03)  # 2,000 frames
    for s, i in [(0, 0), (3, 7), (49, 39)]:
        first = noise(f"0/{s}", i, box, 640, 480)
        assert noise(f"0/{s}", i, box, 640, 480) == first  # the same wrong box every time
        b, outlier = first
        assert (b != box) == outlier
    # Another seed picks other frames; fraction 0 alters nothing.
    other = [AnnotationNoise(0.4, "shift_scale", seed=2)(f"0/{s}", i, box, 640, 480)[1]
             for s in range(50) for i in range(40)]
    assert 0.4 < np.mean(np.array(flags) == np.array(other)) < 0.8
    assert AnnotationNoise(0.0, "random")("0/0", 0, box, 640, 480) == (box, False)
    assert AnnotationNoise.from_config({"fraction": 0.0}) is None
    assert repr(AnnotationNoise.from_config({"fraction": 0.2, "kind": "random", "seed": 3})) == \
        "AnnotationNoise(fraction=0.2, kind='random', seed=3)"
    with pytest.raises(ValueError, match="fraction"):
        AnnotationNoise(1.0, "shift")
