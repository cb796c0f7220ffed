"""Module-level test trackers (picklable for spawned runner workers)."""
import numpy as np


class FailingOnTracker:
    """Identity tracker that raises inside ``track`` for one named sequence (a crash mid-sequence)."""

    def __init__(self, fail_on: str):
        self.fail_on = fail_on

    def initialize(self, image, info):
        self.box = list(info["init_bbox"])
        self.name = info["sequence_name"]
        return {"target_bbox": self.box}

    def track(self, image, info):
        if self.name == self.fail_on and info["frame_index"] == 3:
            raise RuntimeError(f"simulated crash in {self.name}")
        return {"target_bbox": self.box}


class BadOutputTracker:
    """Returns a NaN box from frame 2 on."""

    def initialize(self, image, info):
        self.box = list(info["init_bbox"])

    def track(self, image, info):
        return {"target_bbox": [np.nan] * 4 if info["frame_index"] >= 2 else self.box}


class SlowIdentityTracker:
    """Identity tracker that takes ``seconds`` per frame, so that two runners overlap in time."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def initialize(self, image, info):
        self.box = list(info["init_bbox"])

    def track(self, image, info):
        import time

        time.sleep(self.seconds)
        return {"target_bbox": self.box}


def run_otb_folder(args):
    """One evaluation runner (run in a spawned process): ``args = (dataset root, results folder)``; returns
    ``[(sequence, status)]``. Lives here, not in a test module, so that the worker does not import test
    modules (and their ``conftest``) to unpickle it."""
    from ebm_refine.tracking.datasets import load_dataset
    from ebm_refine.tracking.evaluation import TrackerFactory, run_dataset

    root, out = args
    factory = TrackerFactory("slow", "default", "tracking_helpers:SlowIdentityTracker", {"seconds": 0.05})
    return [(r.name, r.status) for r in run_dataset(load_dataset("otb", root), factory, out, progress=False)]
