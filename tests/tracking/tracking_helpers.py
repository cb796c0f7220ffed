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
