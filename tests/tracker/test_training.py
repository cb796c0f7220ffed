"""Pair sampling, training, checkpoint/resume, the train script and DDP with two gloo CPU processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ebm_refine.tracking.models import load_net
from ebm_refine.tracking.synthetic import SyntheticDataset
from ebm_refine.tracking.tracker import EBMAtomTracker, load_tracker_params
from ebm_refine.tracking.train import PairDataset, coco_sequences, train
from ebm_refine.tracking.train.data import IndexSampler

from tracker_helpers import REPO, TINY_NET, TINY_TRACKER

SYN = {"height": 96, "width": 128, "num_frames": 8, "distractor_prob": 0.0}


def _cfg(iterations, workers=0, batch=2):
    return {
        "net": TINY_NET,
        "data": {"processing": {"output_size": 64, "max_gap": 5},
                 "sources": [{"type": "synthetic", "num_sequences": 20, "config": SYN}]},
        "train": {"batch_size": batch, "num_iterations": iterations, "num_workers": workers, "log_interval": 1,
                  "checkpoint_interval": 2, "lr": 1e-3, "seed": 3},
    }


def test_pair_dataset_items():
    ds = PairDataset([(SyntheticDataset(5, cfg=None, **SYN), 1.0)], {"output_size": 64, "center_jitter": 0.0,
                                                                    "scale_jitter": 0.0}, seed=1)
    a, b = ds[7], ds[7]
    for k in a:
        assert torch.equal(a[k], b[k])  # a sample is a function of (seed, index)
    assert a["ref_image"].shape == (3, 64, 64) and a["ref_image"].dtype == torch.uint8
    # Without jitter the target sits in the middle of the crop, its size 1/5 of the crop side.
    for key in ("ref_box", "test_box"):
        x1, y1, x2, y2 = a[key].tolist()
        assert abs((x1 + x2) / 2 - 32) < 1e-3 and abs(np.sqrt((x2 - x1) * (y2 - y1)) - 64 / 5) < 1e-3


def test_index_sampler_partitions_the_stream():
    r0 = list(IndexSampler(1, 3, 2, rank=0, world_size=2))
    r1 = list(IndexSampler(1, 3, 2, rank=1, world_size=2))
    assert r0 == [4, 5, 8, 9] and r1 == [6, 7, 10, 11]


def test_coco_one_frame_sequences(shared_data):
    coco = shared_data / "coco" / "tiny"
    seqs = coco_sequences(str(coco / "instances_train2017_small.json"), str(coco / "train_2017_small"))
    assert len(seqs) > 20 and all(len(s) == 1 for s in seqs)
    item = PairDataset([(seqs, 1.0)], {"output_size": 64})[0]
    assert item["test_image"].shape == (3, 64, 64)


def test_train_checkpoint_and_exact_resume(tmp_path):
    straight = train(_cfg(4), str(tmp_path / "a"), log=lambda s: None)
    assert straight["start_iteration"] == 0 and np.isfinite(straight["final_loss"])
    train(_cfg(2), str(tmp_path / "b"), log=lambda s: None)
    resumed = train(_cfg(4), str(tmp_path / "b"), log=lambda s: None)
    assert resumed["start_iteration"] == 2
    a = torch.load(tmp_path / "a" / "checkpoint.pth", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pth", weights_only=False)
    assert a["iteration"] == b["iteration"] == 4
    for k, v in a["net"]["estimator"].items():
        assert torch.allclose(v.float(), b["net"]["estimator"][k].float(), atol=1e-6), k
    logs = [json.loads(line) for line in open(tmp_path / "b" / "log.jsonl")]
    assert [r["iteration"] for r in logs] == [1, 2, 3, 4]


def test_trained_net_drives_the_tracker_with_worker_processes(tmp_path, small_seq):
    out = train(_cfg(2, workers=1), str(tmp_path), log=lambda s: None)
    net = load_net(out["net_path"])
    assert net.method == "ml_is"
    tr = EBMAtomTracker(load_tracker_params(None, TINY_TRACKER), net=net)
    tr.initialize(small_seq.frame(0), {"init_bbox": small_seq.boxes[0]})
    res = tr.track(small_seq.frame(1))
    assert np.isfinite(res["energy"]) and len(res["target_bbox"]) == 4


def _run_script(tmp_path, out, *extra):
    cfg_path = tmp_path / "tiny.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(_cfg(2)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "tools" / "train_tracker.py"), "--config", str(cfg_path),
                           "--out", str(out), *extra], capture_output=True, text=True, env=env, timeout=300)


def test_ddp_two_gloo_processes(tmp_path):
    out = tmp_path / "ddp"
    proc = _run_script(tmp_path, out, "--world-size", "2", "--set", "train.num_iterations=3",
                       "train.checkpoint_interval=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoint.pth", weights_only=False)
    assert ckpt["iteration"] == 3
    assert (out / "net.pth").is_file()
    logs = [json.loads(line) for line in open(out / "log.jsonl")]
    assert logs[-1]["iteration"] == 3 and np.isfinite(logs[-1]["loss"])
