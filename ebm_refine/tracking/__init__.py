"""Single-object tracking: datasets, evaluation and (in a later step) the EBM-refined ATOM-style tracker.

Sub-packages
------------
datasets     one :class:`~ebm_refine.tracking.datasets.Sequence` type and loaders for UAV123 / UAV20L /
             UAV123@10fps, TrackingNet, OTB, VOT, LaSOT, GOT-10k and plain frame folders, behind a
             name -> loader registry.
evaluation   a resumable, parallel runner for trackers with pytracking's API, the three scoring protocols
             (``pytracking``, ``otb``, ``trackingnet``), reports/plots and the TrackingNet submission packer.

This module deliberately imports nothing heavy: import the sub-packages you need.
"""
