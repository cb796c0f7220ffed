"""Test helpers of the tracking tests: small file writers, and module-level test trackers (picklable for
spawned runner workers). A module of its own, not conftest: other test folders have a conftest too, and
``from conftest import ...`` would find whichever pytest loaded last."""
import os

import numpy as np


def write_jpeg(path, image: np.ndarray) -> None:
    import cv2

    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    ok = cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]))
    assert ok, path


def touch_frames(folder, numbers, pattern="{:06d}.jpg") -> None:
    """Empty placeholder frame files (loaders only check existence)."""
    os.makedirs(str(folder), exist_ok=True)
    for k in numbers:
        open(os.path.join(str(folder), pattern.format(k)), "wb").close()


def write_boxes_txt(path, boxes, sep=",") -> None:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(str(path), "w") as fh:
        for b in np.asarray(boxes, float):
            fh.write(sep.join("NaN" if np.isnan(v) else f"{v:g}" for v in b) + "\n")


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
