"""Tracker parameters are range-checked where they are read, so a parameter file, ``--set``, the demo and the
tools share one check."""
import pytest

from ebm_refine.tracking.tracker.params import check_tracker_params, load_tracker_params
from ebm_refine.utils import BadValueError


@pytest.mark.parametrize("name", ["ebm", "ebm_fast", "ebm_paper", "ebm_backtracking", "iounet", "norefine"])
def test_shipped_parameter_sets_pass(name):
    assert load_tracker_params(name)["box_refinement"]["num_init_boxes"] >= 1


@pytest.mark.parametrize("override, message", [
    ({"box_refinement": {"num_steps": -1}}, "box_refinement.num_steps = -1: must be an integer >= 0"),
    ({"box_refinement": {"num_init_boxes": 0}}, "box_refinement.num_init_boxes = 0: must be an integer >= 1"),
    ({"seed": "abc"}, "seed = 'abc': must be an integer >= 0"),
    ({"seed": True}, "seed = True: must be an integer >= 0"),
    ({"box_refinement": {"step_size_center": float("nan")}}, "step_size_center = nan: must be a finite number >= 0"),
    ({"box_refinement": {"decay": 0.0}}, "box_refinement.decay = 0.0: must be a finite number > 0 and <= 1"),
    ({"scale": {"inside_ratio": 2}}, "scale.inside_ratio = 2: must be a finite number >= 0 and <= 1"),
])
def test_out_of_range_values_name_the_file_and_key(override, message):
    with pytest.raises(BadValueError) as info:
        load_tracker_params("ebm", override)
    text = str(info.value)
    assert "ebm.yaml with its overrides: tracker parameter " in text and message in text and "\n" not in text


def test_nullable_keys_and_partial_dicts():
    params = load_tracker_params("ebm", {"box_refinement": {"feature_window": None, "min_energy_gain": None}})
    assert params["box_refinement"]["feature_window"] is None
    assert check_tracker_params({"box_refinement": {"num_steps": 3}}) == {"box_refinement": {"num_steps": 3}}
    with pytest.raises(BadValueError, match="my params: tracker parameter box_refinement.num_steps = 2.5"):
        check_tracker_params({"box_refinement": {"num_steps": 2.5}}, "my params")
