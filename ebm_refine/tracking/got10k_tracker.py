"""The EBM tracker as a got10k ``Tracker`` (``init(image, box)`` / ``update(image) -> box`` on PIL images),
so got10k's experiments run it as they run any tracker::

    from got10k.experiments import ExperimentOTB
    from ebm_refine.tracking.got10k_tracker import EBMGot10kTracker

    experiment = ExperimentOTB("data/OTB", version=2015)
    experiment.run(EBMGot10kTracker("ebm"))
    experiment.report(["EBM-ebm"])

got10k's OTB success score is our ``otb`` protocol's AUC as a fraction (docs/tracking_evaluation.md).
got10k is a test dependency (``pip install got10k``), not a requirement of the package.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

try:
    from got10k.trackers import Tracker
except ImportError as e:  # pragma: no cover - got10k is in the dev extra
    raise ImportError(f"ebm_refine.tracking.got10k_tracker needs got10k ({e}); install it: pip install got10k") from e

__all__ = ["EBMGot10kTracker"]


class EBMGot10kTracker(Tracker):
    """got10k's tracker API over :class:`~ebm_refine.tracking.tracker.EBMAtomTracker`.

    Args:
        params: a parameter file in ``configs/tracking/`` (``ebm``, ``ebm_fast``, ...) or a YAML path.
        overrides: tracker parameters over the file's (e.g. ``{"seed": 1}``).
        name: the result folder's name in got10k's experiments (default ``EBM-<params>``).

    The tracker is deterministic for a given ``seed`` parameter (its candidate boxes come from a seeded
    generator), so got10k runs it once per sequence.
    """

    def __init__(self, params: str = "ebm", overrides: Optional[Dict[str, Any]] = None, name: Optional[str] = None):
        from .tracker import EBMAtomTracker, load_tracker_params

        super().__init__(name=name or f"EBM-{params}", is_deterministic=True)
        self.tracker = EBMAtomTracker(load_tracker_params(params, overrides))

    def init(self, image, box) -> None:
        """``image``: a PIL image (got10k converts frames to RGB); ``box``: x, y, w, h in pixels."""
        self.tracker.initialize(np.asarray(image.convert("RGB")), {"init_bbox": [float(v) for v in box]})

    def update(self, image) -> np.ndarray:
        """The box x, y, w, h (floats, pixels) in ``image``."""
        return np.asarray(self.tracker.track(np.asarray(image.convert("RGB")))["target_bbox"], dtype=np.float64)
