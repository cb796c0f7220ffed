"""No code runs from a tracker network or training checkpoint file; the shipped networks load safely."""
import os
import pickle

import pytest
import torch

from ebm_refine.tracking.models.network import load_net
from ebm_refine.utils.cli import user_message
from ebm_refine.utils.resources import resource_path
from ebm_refine.utils.safe_load import UnsafeFileError, load_plain_pickle, read_torch_file


class _TouchMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_tracker_network_that_runs_code_is_refused_in_one_line(tmp_path):
    marker, evil = tmp_path / "marker", tmp_path / "net.pth"
    torch.save({"format": "ebm_refine.tracker_net/1", "config": _TouchMarker(marker), "backbone": {},
                "estimator": {}}, evil)
    with pytest.raises(UnsafeFileError) as info:
        load_net(str(evil))
    line = user_message(info.value)
    assert line.startswith(f"{evil}: refused to load: it would import or call posix.system") and "\n" not in line
    assert not marker.exists()
    # A plain (non-zip) pickle with the same payload: refused too, not run.
    with open(evil, "wb") as fh:
        pickle.dump({"net": _TouchMarker(marker)}, fh, protocol=2)
    with pytest.raises(UnsafeFileError, match="net.pth: refused to load"):
        read_torch_file(str(evil), "a tracker training checkpoint", "start over")
    with open(evil, "rb") as fh, pytest.raises(UnsafeFileError, match="net.pth: refused to load: .* global posix.system"):
        load_plain_pickle(fh, str(evil), "a model-zoo file", "use another")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["ebm_mobilenet_real", "iounet_mobilenet_real"])
def test_shipped_tracker_networks_load_with_weights_only(name):
    path = resource_path("checkpoints", must_exist=True) / "tracking" / name / "net.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = load_net(str(path))
    assert net.config["backbone"]["name"] == "mobilenet_v2"
    for key, value in net.estimator.state_dict().items():
        torch.testing.assert_close(value, state["estimator"][key])
