"""Single-object tracking: the EBM-refined ATOM-style tracker, its training, datasets and evaluation.

Sub-packages
------------
datasets     one :class:`~ebm_refine.tracking.datasets.Sequence` type and loaders for UAV123 / UAV20L /
             UAV123@10fps, TrackingNet, OTB, VOT, LaSOT, GOT-10k and plain frame folders, behind a
             name -> loader registry.
evaluation   a resumable, parallel runner for trackers with pytracking's API, the three scoring protocols
             (``pytracking``, ``otb``, ``trackingnet``), reports/plots and the TrackingNet submission packer.
tracker      ``EBMAtomTracker`` (online classifier + box estimation by EBM / IoU-Net / none), parameter files.
models       the backbone, the box estimator (energy network) and the network file format.
train        pytracking-ltr-style training of the box estimator (pairs, sources, loss, trainer).
processing   (module) search-region crops and the training crops' jitter, shared by tracker and training
             (ltr's ``processing_utils``).

The generated training / test sequences are :mod:`ebm_refine.data.synthetic_tracking`, next to the
synthetic detection set; YAML config helpers are :mod:`ebm_refine.utils.config`.

Adapters (:mod:`.adapters`, :mod:`.got10k_tracker`): ``create_tracker(name)`` returns an OpenCV-style
tracker (``init(frame_bgr, box)`` / ``update(frame_bgr) -> (found, box)``); ``EBMGot10kTracker`` is a got10k
``Tracker``.

This module deliberately imports nothing heavy: import the sub-packages you need (``create_tracker`` is
imported on first use).
"""


def __getattr__(name: str):
    if name == "create_tracker":
        from .adapters import create_tracker

        return create_tracker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
