"""The detector-aware proposal in the plugin: fitting it from a detections file on real COCO images
(tools/fit_detector_proposal.py), and MODEL.EBM.DETECTOR_PROPOSAL building the energy's proposal."""
import json
import os
import subprocess
import sys

import pytest
import torch
from d2_helpers import REPO
from detectron2.data import DatasetCatalog

from ebm_refine.core import ResidualMixture
from ebm_refine.detectron2 import load_config
from ebm_refine.detectron2.config import ConfigValueError
from ebm_refine.detectron2.energy import proposal_from_config
from ebm_refine.detectron2.refine_detections import jittered_ground_truth

TOOL = REPO / "tools" / "fit_detector_proposal.py"


def run_tool(args, shared_data):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EBM_DEBUG": "", "EBM_SHARED_DATA": str(shared_data)}
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def standins(shared_data, tmp_path_factory):
    """Stand-in detections on the 16 COCO tiny images: every ground truth moved by N(0, 0.1) in the relative
    encoding, so the fitted mixture must find a spread of about 0.1 around zero."""
    os.environ.setdefault("EBM_SHARED_DATA", str(shared_data))
    records = DatasetCatalog.get("coco_tiny_train2017")
    path = tmp_path_factory.mktemp("detprop") / "standins.json"
    path.write_text(json.dumps(jittered_ground_truth(records, "coco_tiny_train2017", sigma=0.1, seed=0)))
    return path


def test_fit_tool_recovers_the_standins_spread(standins, shared_data, tmp_path):
    out = tmp_path / "mixture.json"
    proc = run_tool(["--dataset", "coco_tiny_train2017", "--detections", str(standins), "--output", str(out),
                     "--components", "1", "--iou", "0.3"], shared_data)
    assert proc.returncode == 0, proc.stderr
    m = ResidualMixture.load(str(out))
    # ~190 non-crowd boxes moved by sigma 0.1; those still at IoU >= 0.3 (nearly all) give the fit
    assert 150 < m.num_residuals <= 197
    assert torch.allclose(m.means, torch.zeros(1, 4), atol=0.03)
    assert ((m.sigmas > 0.07) & (m.sigmas < 0.12)).all(), m.sigmas
    assert "residuals" in proc.stdout and str(out) in proc.stdout


def test_fit_tool_bad_input_is_one_line(standins, shared_data, tmp_path, one_line_error):
    proc = run_tool(["--dataset", "coco_tiny_train2017", "--detections", str(standins), "--output",
                     str(tmp_path / "m.json"), "--iou", "nan"], shared_data)
    assert proc.returncode == 2
    one_line_error(proc.stderr, "fit_detector_proposal.py", "--iou")
    proc = run_tool(["--dataset", "coco_tiny_train2017", "--detections", str(tmp_path / "missing.json"), "--output",
                     str(tmp_path / "m.json")], shared_data)
    assert proc.returncode == 2
    one_line_error(proc.stderr, "fit_detector_proposal.py", "missing.json")


def test_config_builds_the_detector_aware_proposal(tmp_path):
    cfg_path = REPO / "configs" / "COCO-Refine" / "ebm_refiner_mobilenet_v2_fpn.yaml"
    mixture = ResidualMixture([[0.0, 0.0, 0.1, 0.1]], [[0.05, 0.05, 0.2, 0.2]], [1.0])
    (tmp_path / "m.json").write_text(json.dumps(mixture.to_dict()))
    cfg = load_config(str(cfg_path), ["MODEL.EBM.DETECTOR_PROPOSAL.FILE", str(tmp_path / "m.json"),
                                      "MODEL.EBM.DETECTOR_PROPOSAL.WEIGHT", "0.25"])
    q = proposal_from_config(cfg)
    assert q.residual_weight == 0.25 and q.mixture.num_components == 4
    assert q.mixture.weights.tolist() == pytest.approx([0.25, 0.25, 0.25, 0.25])
    plain = proposal_from_config(load_config(str(cfg_path), []))
    assert plain.residual_mixture is None and plain.mixture.means is None
    with pytest.raises(ConfigValueError, match="DETECTOR_PROPOSAL.FILE .*not found"):
        proposal_from_config(load_config(str(cfg_path), ["MODEL.EBM.DETECTOR_PROPOSAL.FILE", str(tmp_path / "no.json")]))
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ConfigValueError, match="list.json: not a residual-mixture file"):
        proposal_from_config(load_config(str(cfg_path), ["MODEL.EBM.DETECTOR_PROPOSAL.FILE", str(tmp_path / "list.json")]))
