"""Pair sampling, training, checkpoint/resume, the train script and DDP with two gloo CPU processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ebm_refine.tracking.models import load_net
from ebm_refine.data.synthetic_tracking import SyntheticDataset
from ebm_refine.tracking.tracker import EBMAtomTracker, load_tracker_params
from ebm_refine.tracking.train import PairDataset, coco_sequences, train
from ebm_refine.tracking.train.data import IndexSampler
from ebm_refine.tracking.train.trainer import process_device

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
    a = torch.load(tmp_path / "a" / "checkpoint.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 4
    for k, v in a["net"]["estimator"].items():
        assert torch.allclose(v.float(), b["net"]["estimator"][k].float(), atol=1e-6), k
    logs = [json.loads(line) for line in open(tmp_path / "b" / "log.jsonl")]
    assert [r["iteration"] for r in logs] == [1, 2, 3, 4]


@pytest.mark.slow
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


@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path):
    out = tmp_path / "ddp"
    proc = _run_script(tmp_path, out, "--world-size", "2", "--set", "train.num_iterations=3",
                       "train.checkpoint_interval=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["iteration"] == 3
    assert (out / "net.pth").is_file()
    logs = [json.loads(line) for line in open(out / "log.jsonl")]
    assert logs[-1]["iteration"] == 3 and np.isfinite(logs[-1]["loss"])


# ---------------------------------------------------------------------------------------------- guards
def _script(tmp_path, cfg, out, *extra):
    import yaml

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("EBM_DEBUG", None)
    return subprocess.run([sys.executable, str(REPO / "tools" / "train_tracker.py"), "--config", str(cfg_path),
                           "--out", str(out), *extra], capture_output=True, text=True, env=env, timeout=300)


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_config_keys_are_strict():
    from ebm_refine.tracking.train import check_train_config
    from ebm_refine.utils import UserError

    check_train_config(_cfg(2))  # the tests' own config is valid
    for bad, key in [({"train": {"num_iteration": 4}}, "train.num_iteration"),
                     ({"net": {"loss": {"sigma": [0.1]}}}, "net.loss.sigma"),
                     ({"data": {"procesing": {}}}, "data.procesing"),
                     ({"typo": 1}, "typo")]:
        cfg = _cfg(2)
        for section, value in bad.items():
            cfg[section] = {**cfg.get(section, {}), **value} if isinstance(value, dict) else value
        with pytest.raises(UserError, match=key.replace(".", r"\.")):
            check_train_config(cfg)
    cfg = _cfg(2)
    cfg["data"]["sources"][0]["num_sequence"] = 3
    with pytest.raises(UserError, match=r"data\.sources\[0\]\.num_sequence"):
        check_train_config(cfg)
    for key, value in [("batch_size", 0), ("num_iterations", -1), ("lr", 0.0)]:
        cfg = _cfg(2)
        cfg["train"][key] = value
        with pytest.raises(UserError, match=f"train.{key}"):
            check_train_config(cfg)


def test_renamed_training_keys_name_their_new_name():
    from ebm_refine.tracking.train import check_train_config
    from ebm_refine.utils import UserError

    cfg = _cfg(2)
    cfg["net"] = {"loss": {"method": "nce_plus", "beta": 0.1}}
    with pytest.raises(UserError, match=r"^training config key 'net.loss.beta' was renamed 'net.loss.nce_beta'; "):
        check_train_config(cfg)
    cfg["net"] = {"loss": {"method": "iou"}}
    with pytest.raises(UserError, match=r"^net.loss.method 'iou' was renamed 'iou_confidence'; use the new name$"):
        check_train_config(cfg)


@pytest.mark.slow
def test_script_errors_are_one_line(tmp_path):
    # An unknown --set key (it used to run the full schedule), then a missing data root.
    proc = _script(tmp_path, _cfg(2), tmp_path / "a", "--set", "train.num_iteration=4")
    _one_line_error(proc, "train.num_iteration", "unknown")
    assert not (tmp_path / "a" / "net.pth").exists()
    cfg = _cfg(2)
    cfg["data"]["sources"] = [{"type": "dataset", "name": "otb", "root": str(tmp_path / "no_such_root")}]
    proc = _script(tmp_path, cfg, tmp_path / "b")
    _one_line_error(proc, "no_such_root", "data.sources[0]")


@pytest.mark.parametrize("content", ["empty", "text", "foreign", "other_net"])
def test_unusable_checkpoint_suggests_no_resume(tmp_path, content):
    out = tmp_path / "run"
    out.mkdir()
    ckpt = out / "checkpoint.pth"
    if content == "empty":
        ckpt.write_bytes(b"")
    elif content == "text":
        ckpt.write_text("this is not a checkpoint\n")
    elif content == "foreign":
        torch.save({"model": {"w": torch.zeros(2)}, "iteration": 3}, ckpt)
    else:  # a checkpoint of a network with other layer widths
        cfg = _cfg(2)
        cfg["net"] = {**TINY_NET, "estimator": {"pred_dims": [4, 4], "inter_dims": [8, 8]}}
        train(cfg, str(out), log=lambda s: None)
    with pytest.raises(Exception) as info:
        train(_cfg(2), str(out), log=lambda s: None)
    from ebm_refine.utils import UserError

    assert isinstance(info.value, UserError) and "--no-resume" in str(info.value) and "checkpoint.pth" in str(info.value)
    if content == "text":  # the script: one line, exit 2; --no-resume starts over
        _one_line_error(_script(tmp_path, _cfg(2), out), "checkpoint.pth", "--no-resume")
        proc = _script(tmp_path, _cfg(2), out, "--no-resume")
        assert proc.returncode == 0, proc.stderr
        assert torch.load(ckpt, weights_only=True)["iteration"] == 2


def test_resume_with_fewer_iterations_is_an_error(tmp_path):
    from ebm_refine.utils import UserError

    first = train(_cfg(4), str(tmp_path), log=lambda s: None)
    with pytest.raises(UserError, match="already trained 4 iterations.*num_iterations = 2"):
        train(_cfg(2), str(tmp_path), log=lambda s: None)
    again = train(_cfg(4), str(tmp_path), log=lambda s: None)  # nothing left to do: no retraining
    assert again["start_iteration"] == 4 and again["final_loss"] == pytest.approx(first["final_loss"])
    assert [json.loads(line)["iteration"] for line in open(tmp_path / "log.jsonl")] == [1, 2, 3, 4]


def test_non_finite_loss_stops_before_anything_non_finite_is_saved(tmp_path, monkeypatch):
    from ebm_refine.tracking.train import BoxEstimationActor, TrainingDivergedError

    forward = BoxEstimationActor.forward
    calls = {"n": 0}

    def nan_from_the_third(self, *args, **kwargs):
        calls["n"] += 1
        loss = forward(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(BoxEstimationActor, "forward", nan_from_the_third)
    with pytest.raises(TrainingDivergedError, match="iteration 3.*iteration 2"):
        train(_cfg(6), str(tmp_path), log=lambda s: None)
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["net"]["estimator"].values() if v.is_floating_point())
    assert not (tmp_path / "net.pth").exists()


def test_load_net_refuses_non_finite_and_foreign_files(tmp_path, tiny_net):
    from ebm_refine.tracking.models import save_net
    from ebm_refine.utils import UserError

    path = tmp_path / "net.pth"
    save_net(str(path), tiny_net)
    state = torch.load(path, weights_only=True)
    key = next(k for k, v in state["estimator"].items() if v.is_floating_point())
    state["estimator"][key] = state["estimator"][key].clone().fill_(float("nan"))
    torch.save(state, path)
    with pytest.raises(UserError, match=r"net\.pth: 1 weight tensor\(s\) hold NaN"):
        load_net(str(path))
    with pytest.raises(ValueError, match="not finite"):  # and save_net never writes such a network
        tiny_net.estimator.head.bias.data.fill_(float("inf"))
        try:
            save_net(str(tmp_path / "bad.pth"), tiny_net)
        finally:
            tiny_net.estimator.head.bias.data.zero_()
    assert not (tmp_path / "bad.pth").exists()
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(UserError, match=r"text\.pth: not a tracker network file"):
        load_net(str(tmp_path / "text.pth"))
    torch.save({"weights": 1}, tmp_path / "dict.pth")
    with pytest.raises(UserError, match=r"dict\.pth: not a tracker network file \(it holds weights\)"):
        load_net(str(tmp_path / "dict.pth"))


def test_each_process_picks_its_gpu_from_its_local_rank(monkeypatch):
    """Issue 13 (multi-node training): the GPU of a DDP process is its index on its machine. Rank 5 of a
    2-machine x 4-GPU job runs on the second machine's GPU 1, which torchrun announces as LOCAL_RANK=1."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert process_device("cuda", rank=5, distributed=True) == torch.device("cuda:1")
    assert process_device("cuda", rank=5, distributed=True, local_rank=3) == torch.device("cuda:3")
    # Single process, or the CPU: the device as given, whatever the ranks.
    assert process_device("cuda", rank=5, distributed=False) == torch.device("cuda")
    assert process_device("cpu", rank=5, distributed=True) == torch.device("cpu")
    # Without torchrun's variable (all processes on one machine, e.g. mp.spawn) the global rank is the index.
    monkeypatch.delenv("LOCAL_RANK")
    assert process_device("cuda", rank=2, distributed=True) == torch.device("cuda:2")


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "tracking").glob("train_*.yaml")), ids=lambda p: p.name)
def test_shipped_training_configs_pass_the_checks(path):
    """Every shipped training config is valid as written (its _base_ chain included): e.g. the IoU-Net config must
    switch off the EBM config's part samples, which IoU regression refuses."""
    from ebm_refine.tracking.train import load_train_config

    cfg = load_train_config(str(path))
    assert cfg["train"]["num_iterations"] > 0
