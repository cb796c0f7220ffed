"""No code runs from a data file: Detectron2 weights (.pkl, .pth) and config YAML load plain data only."""
import collections
import os
import pickle

import numpy as np
import pytest
import torch
from d2_helpers import small_cfg
from detectron2.modeling import build_model

from ebm_refine.detectron2 import CheckpointError, EBMCheckpointer, ebm_config_path, load_config
from ebm_refine.detectron2.engine import ConfigError
from ebm_refine.detectron2.model_zoo import list_ebm_configs
from ebm_refine.detectron2.predictor import EBMPredictor
from ebm_refine.utils import BadValueError


class _TouchMarker:
    """Pickles as a call of ``os.system("touch <marker>")``: what a malicious file would run on load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _one_line_naming(error, path):
    text = str(error)
    assert "\n" not in text and str(path) in text, text
    return text


def test_model_zoo_pickle_loads_and_a_pickle_that_runs_code_is_refused(synthetic_names, tmp_path):
    model = build_model(small_cfg(tmp_path))
    weights = {k: v.numpy() + 0.5 for k, v in model.state_dict().items()}
    # As Detectron2's model-zoo converter writes them (plus numpy scalars and an OrderedDict, which old
    # Caffe2 files hold), pickled with protocol 2 and read as latin1.
    zoo = tmp_path / "zoo.pkl"
    with open(zoo, "wb") as fh:
        pickle.dump({"model": collections.OrderedDict(weights), "__author__": "ebm_refine tests",
                     "matching_heuristics": True, "extra": [np.float32(1.5), np.int64(3), (None, True, "x")]},
                    fh, protocol=2)
    fresh = build_model(small_cfg(tmp_path))
    EBMCheckpointer(fresh).load(str(zoo))
    name = "backbone.bottom_up.stem.0.weight"
    assert name in weights
    torch.testing.assert_close(fresh.state_dict()[name], torch.from_numpy(weights[name]))

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as fh:
        pickle.dump({"model": {name: _TouchMarker(marker)}, "__author__": "x"}, fh, protocol=2)
    with pytest.raises(CheckpointError) as info:
        EBMCheckpointer(fresh).load(str(evil))
    assert "refused to load: it would import or call global posix.system" in _one_line_naming(info.value, evil)
    assert not marker.exists()


def test_a_torch_file_that_runs_code_is_refused(synthetic_names, tmp_path):
    model = build_model(small_cfg(tmp_path))
    marker, evil = tmp_path / "marker", tmp_path / "evil.pth"
    torch.save({"model": model.state_dict(), "trainer": _TouchMarker(marker)}, evil)
    with pytest.raises(CheckpointError) as info:
        EBMCheckpointer(model).load(str(evil))
    assert "posix.system" in _one_line_naming(info.value, evil)
    assert not marker.exists()


def test_config_yaml_with_a_python_tag_is_refused_also_through_base(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"_BASE_: {ebm_config_path('Base-EBM-Refiner.yaml')}\n"
                    f"MODEL:\n  DEVICE: !!python/object/apply:os.system ['touch {marker}']\n")
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: evil.yaml\nSOLVER:\n  MAX_ITER: 5\n")
    for path in (evil, child):
        with pytest.raises(ConfigError) as info:
            load_config(str(path))
        line = _one_line_naming(info.value, evil)  # the file holding the tag, also when reached via _BASE_
        assert f"{evil}:3: refused" in line and "python/object/apply:os.system" in line
    assert not marker.exists()
    # The shipped configs, whose _BASE_ chains the safe loader follows, all still load.
    shipped = list_ebm_configs()
    assert len(shipped) >= 10
    cfg = load_config(ebm_config_path("COCO-Refine/ebm_refiner_mobilenet_v2_fpn.yaml"))
    assert cfg.MODEL.META_ARCHITECTURE == "EBMBoxRefiner"  # set by its _BASE_ file
    for name in shipped:
        load_config(ebm_config_path(name))


def test_predictor_refuses_empty_weights(synthetic_names, tmp_path):
    cfg = small_cfg(tmp_path)
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""
    with pytest.raises(BadValueError, match="MODEL.WEIGHTS is empty"):
        EBMPredictor(cfg)


@pytest.mark.parametrize("opts, message", [
    (["SOLVER.MAX_ITER", "-1"], "SOLVER.MAX_ITER must be a whole number >= 1, got -1"),
    (["SOLVER.STEPS", "(2, 2)"], "SOLVER.STEPS must be strictly increasing whole numbers >= 1"),
    (["SOLVER.STEPS", "(0, 5)"], "SOLVER.STEPS must be strictly increasing"),
    (["SOLVER.BASE_LR", "-0.1"], "SOLVER.BASE_LR must be a finite number >= 0"),
])
def test_solver_values_detectron2_cannot_schedule_are_one_line(opts, message):
    with pytest.raises(ConfigError) as info:
        load_config(ebm_config_path("Synthetic/ebm_compact_fpn_synthetic.yaml"), opts)
    assert message in str(info.value) and "with its options" in str(info.value)


def test_tune_refinement_settings_files_are_checked(tmp_path):
    from ebm_refine.detectron2.refine_detections import read_best_setting
    from ebm_refine.utils import UserError

    good = tmp_path / "good.json"
    good.write_text('{"best": {"num_steps": 3, "step_size_center": 0.001, "step_size_size": 0.004, "ap_refined": 30.1}}')
    assert read_best_setting(str(good)) == {"num_steps": 3, "step_size_center": 0.001, "step_size_size": 0.004}
    for text, fragment in (('{"best": {}}', "best.num_steps is None"), ("[1, 2]", "holds a list"),
                           ('{"best": {"num_steps": 3, "step_size_center": NaN, "step_size_size": 1}}',
                            "best.step_size_center is nan")):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(UserError, match=fragment):
            read_best_setting(str(bad))
