"""Synthetic training/test sequences."""
from __future__ import annotations

import numpy as np

from ebm_refine.data.synthetic_tracking import SyntheticConfig, SyntheticDataset, SyntheticSequence, write_sequence


def test_deterministic_and_valid(small_seq_cfg):
    a, b = SyntheticSequence(7, small_seq_cfg), SyntheticSequence(7, small_seq_cfg)
    assert np.array_equal(a.frame(5), b.frame(5)) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.frame(5), SyntheticSequence(8, small_seq_cfg).frame(5))
    f = a.frame(0)
    assert f.shape == (120, 160, 3) and f.dtype == np.uint8
    assert a.boxes.shape == (12, 4) and (a.boxes[:, 2:] > 0).all() and np.isfinite(a.boxes).all()
    assert a.visible.dtype == bool and a.visible.shape == (12,)


def test_target_pixels_match_the_box():
    cfg = SyntheticConfig(height=100, width=100, num_frames=2, num_occluders=(0, 0), distractor_prob=0.0,
                          noise_std=0.0, camera_speed=0.0, brightness_drift=0.0)
    seq = SyntheticSequence(1, cfg)
    tex, alpha = seq.target.render(0, 100, 100)
    ys, xs = np.nonzero(alpha > 0.5)
    x, y, w, h = seq.boxes[0]
    assert abs(xs.min() - x) <= 1.5 and abs(xs.max() + 1 - (x + w)) <= 1.5
    assert abs(ys.min() - y) <= 1.5 and abs(ys.max() + 1 - (y + h)) <= 1.5


def test_occlusion_lowers_visibility():
    cfg = SyntheticConfig(num_frames=40, num_occluders=(3, 3), min_size=0.3, max_size=0.4)
    fractions = [SyntheticSequence(s, cfg)._visible_fraction(i) for s in range(3) for i in range(0, 40, 5)]
    assert min(fractions) < 0.999 and max(fractions) <= 1.0 + 1e-9


def test_dataset_and_folder_export(tmp_path, small_seq_cfg):
    ds = SyntheticDataset(3, first_seed=100, cfg=small_seq_cfg)
    assert len(ds) == 3 and ds[1].name == "synthetic_000101"
    folder = write_sequence(ds[0], str(tmp_path))
    from ebm_refine.tracking.datasets import load_folder_sequence

    seq = load_folder_sequence(folder)
    assert len(seq) == 12
    np.testing.assert_allclose(seq.ground_truth, ds[0].boxes, atol=1e-3)
