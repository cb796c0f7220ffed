"""Search-region size and the training crops' jitter (ebm_refine.tracking.processing)."""
import numpy as np
import pytest

from ebm_refine.tracking.processing import jitter_box, photometric_jitter, search_region_side


def test_search_region_side_is_the_factor_times_the_geometric_mean_side():
    assert search_region_side(4.0, 9.0, 5.0) == pytest.approx(30.0)


def test_jitter_box_draws_scale_then_centre_and_is_reproducible():
    assert jitter_box(np.random.default_rng(0), 50.0, 40.0, 20.0, 10.0, 0.0, 0.0) == (50.0, 40.0, 20.0, 10.0)
    a = jitter_box(np.random.default_rng(7), 50.0, 40.0, 20.0, 10.0, 4.5, 0.5)
    assert a == jitter_box(np.random.default_rng(7), 50.0, 40.0, 20.0, 10.0, 4.5, 0.5)
    rng = np.random.default_rng(7)
    sw, sh = np.exp(rng.normal() * 0.5), np.exp(rng.normal() * 0.5)
    w, h = 20.0 * sw, 10.0 * sh
    off = np.sqrt(w * h) * 4.5 * (rng.random(2) - 0.5)
    np.testing.assert_allclose(a, (50.0 + off[0], 40.0 + off[1], w, h))
    # The centre moves at most center_jitter / 2 jittered sizes.
    cx, cy, w, h = a
    assert abs(cx - 50.0) <= 2.25 * np.sqrt(w * h) and abs(cy - 40.0) <= 2.25 * np.sqrt(w * h)


def test_photometric_jitter_scales_channels_and_can_turn_grey():
    crop = np.full((2, 3, 3), 100, np.uint8)
    assert np.array_equal(photometric_jitter(np.random.default_rng(0), crop, 0.0, 0.0), crop)
    grey = photometric_jitter(np.random.default_rng(0), np.dstack([np.full((2, 2), v, np.uint8) for v in (0, 90, 255)]),
                              0.0, 1.0)
    assert grey.dtype == np.uint8 and (grey == 115).all()
