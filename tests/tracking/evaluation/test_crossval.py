"""K-fold cross-validation of the tracker: folds that keep a video together, the per-fold training config, and
tools/cross_validate_tracker.py end to end (split, train, track, report) on generated OTB-layout sequences."""
import importlib.util
import json

import numpy as np
import pytest

from ebm_refine.tracking.evaluation.crossval import (fold_training_config, load_plan, make_folds, make_plan,
                                                     save_plan, training_sequences, video_key)
from ebm_refine.utils import BadValueError, MissingFileError
from ebm_refine.utils.cli import run_cli
from ebm_refine.utils.config import OverrideError, apply_dotted_overrides

from tracker_helpers import REPO, TINY_NET, TINY_TRACKER
from tracking_helpers import write_boxes_txt, write_jpeg

FRAMES = {"car16_1": 70, "car16_2": 76, "group1_1": 75, "group1_3": 79, "group1_4": 80, "Biker": 79,
          "wakeboard4": 78, "S1301": 77, "boat5": 57, "Toy": 68}


def test_video_key_follows_uav123_part_names():
    assert [video_key(n) for n in ("car16_2", "group1_3", "wakeboard4", "S1301", "Jogging-1", "person1_s")] == \
        ["car16", "group1", "wakeboard4", "S1301", "Jogging-1", "person1_s"]


def test_folds_keep_videos_together_balance_frames_and_are_reproducible():
    folds = make_folds(sorted(FRAMES), 3, FRAMES)
    assert sorted(n for f in folds for n in f) == sorted(FRAMES)  # a partition
    for video in ("car16", "group1"):
        assert sum(any(video_key(n) == video for n in f) for f in folds) == 1, video
    loads = [sum(FRAMES[n] for n in f) for f in folds]
    # 739 frames; group1 alone is 234: the greedy deal puts every fold within one video of the others
    assert sum(loads) == 739 and max(loads) - min(loads) <= 80, loads
    assert make_folds(list(reversed(sorted(FRAMES))), 3, FRAMES) == folds  # order of names is irrelevant
    # A seed deals the videos in a random order: another split (repeated cross-validation), still whole videos.
    others = [make_folds(sorted(FRAMES), 3, FRAMES, seed=s) for s in range(4)]
    assert any(o != folds for o in others) and make_folds(sorted(FRAMES), 3, FRAMES, seed=2) == others[2]
    for o in others:
        assert sorted(n for f in o for n in f) == sorted(FRAMES)
        assert sum(any(video_key(n) == "group1" for n in f) for f in o) == 1
    # A fixed fold 0 (an existing validation split) is kept as given; the rest is dealt over folds 1..k-1.
    fixed = make_folds(sorted(FRAMES), 3, FRAMES, fixed=["Biker", "wakeboard4"])
    assert fixed[0] == ["Biker", "wakeboard4"] and len(fixed) == 3
    assert training_sequences(fixed, 0) == sorted(set(FRAMES) - {"Biker", "wakeboard4"})
    with pytest.raises(ValueError, match="splits video 'car16'"):
        make_folds(sorted(FRAMES), 3, FRAMES, fixed=["car16_1"])
    with pytest.raises(ValueError, match="not in the set: nope"):
        make_folds(sorted(FRAMES), 3, FRAMES, fixed=["nope"])
    with pytest.raises(ValueError, match="at least 8 videos to deal \\(have 6\\)"):
        make_folds(sorted(FRAMES), 9, FRAMES, fixed=["Biker"])
    with pytest.raises(ValueError, match="fold 3 out of range"):
        training_sequences(folds, 3)


def test_list_items_in_dotted_overrides():
    cfg = {"data": {"sources": [{"type": "dataset", "sequences": ["a"]}, {"type": "coco"}]}}
    apply_dotted_overrides(cfg, ["data.sources.0.sequences=[b, c]", "data.sources.1.weight=0.5"])
    assert cfg["data"]["sources"] == [{"type": "dataset", "sequences": ["b", "c"]}, {"type": "coco", "weight": 0.5}]
    with pytest.raises(OverrideError, match="'2' is not an index of the 2-entry list 'data.sources'"):
        apply_dotted_overrides(cfg, ["data.sources.2.weight=1"])


def test_fold_training_config_restricts_only_the_source_reading_the_root(tmp_path, monkeypatch):
    monkeypatch.setenv("CV_TEST_ROOT", str(tmp_path))
    cfg = {"data": {"sources": [{"type": "dataset", "name": "otb", "root": "${CV_TEST_ROOT}/train", "weight": 1.0},
                                {"type": "dataset", "name": "otb", "root": str(tmp_path / "other")},
                                {"type": "synthetic", "weight": 0.4}]}}
    out = fold_training_config(cfg, str(tmp_path / "train"), ["a", "b"])
    assert out["data"]["sources"][0]["sequences"] == ["a", "b"]
    assert "sequences" not in out["data"]["sources"][1] and "sequences" not in cfg["data"]["sources"][0]
    with pytest.raises(BadValueError, match="exactly one 'dataset' source reading .*elsewhere"):
        fold_training_config(cfg, str(tmp_path / "elsewhere"), ["a"])


def test_plan_file_round_trip_and_errors(tmp_path):
    plan = make_plan("otb", str(tmp_path), [["b", "a"], ["c"]], 0)
    save_plan(str(tmp_path / "plan.json"), plan)
    assert load_plan(str(tmp_path / "plan.json"))["folds"] == [["a", "b"], ["c"]]
    with pytest.raises(MissingFileError, match="run the 'split' step first"):
        load_plan(str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(BadValueError, match="bad.json: not a cross-validation plan"):
        load_plan(str(tmp_path / "bad.json"))


# ------------------------------------------------------------------------------------------------------------
# The tool, end to end

@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("cross_validate_tracker", REPO / "tools" / "cross_validate_tracker.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return lambda argv: run_cli(mod.main, argv, prog="cross_validate_tracker.py")


@pytest.fixture(scope="module")
def otb_root(tmp_path_factory, small_seq_cfg):
    """Four generated 6-frame sequences in OTB layout; two are parts of one 'video' (clipA_1, clipA_2)."""
    from ebm_refine.data.synthetic_tracking import SyntheticSequence

    root = tmp_path_factory.mktemp("cv_otb")
    for seed, name in enumerate(("clipA_1", "clipA_2", "clipB", "clipC")):
        seq = SyntheticSequence(10 + seed, small_seq_cfg)
        for i in range(6):
            write_jpeg(root / name / "img" / f"{i + 1:04d}.jpg", seq.frame(i))
        write_boxes_txt(root / name / "groundtruth_rect.txt", seq.boxes[:6])
    return root


def test_tool_split_train_track_report(tool, otb_root, tmp_path, capsys, one_line_error):
    work = tmp_path / "work"
    assert tool(["split", "--work", str(work), "--dataset", "otb", "--root", str(otb_root), "--folds", "2"]) == 0
    folds = json.loads((work / "plan.json").read_text())["folds"]
    assert len(folds) == 2 and any({"clipA_1", "clipA_2"} <= set(f) for f in folds)
    # A second, different split into the same work folder would orphan its networks and results.
    assert tool(["split", "--work", str(work), "--dataset", "otb", "--root", str(otb_root), "--folds", "3"]) == 2
    one_line_error(capsys.readouterr().err, "cross_validate_tracker.py", "a different split exists")

    # Train fold 0's network (2 iterations of a tiny net) on the other fold's sequences only.
    cfg = tmp_path / "train.yaml"
    cfg.write_text(json.dumps({
        "net": TINY_NET,
        "data": {"processing": {"output_size": 64, "max_gap": 3},
                 "sources": [{"type": "dataset", "name": "otb", "root": str(otb_root)}]},
        "train": {"batch_size": 2, "num_iterations": 2, "num_workers": 0, "checkpoint_interval": 2, "seed": 0}}))
    assert tool(["train", "--work", str(work), "--config", str(cfg), "--fold", "0"]) == 0
    net0 = work / "networks" / "ebm" / "fold0" / "net.pth"
    assert net0.is_file()
    import yaml
    trained = yaml.safe_load((net0.parent / "config.yaml").read_text())
    assert trained["data"]["sources"][0]["sequences"] == folds[1]

    # Fold 1 has no trained network yet: a one-line error that says how to get one.
    params = tmp_path / "tiny.yaml"
    params.write_text(yaml.safe_dump({"_base_": str(REPO / "configs" / "tracking" / "ebm.yaml"), **TINY_TRACKER,
                                      "box_refinement": {"num_init_boxes": 3, "num_steps": 2}}))
    tracker = ["--tracker", f"ebm_atom/{params}"]
    capsys.readouterr()
    assert tool(["track", "--work", str(work), *tracker, "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, "cross_validate_tracker.py", "fold1", "fold network not found",
                   "train --fold 1")
    assert tool(["track", "--work", str(work), *tracker, "--fold", "7", "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, "cross_validate_tracker.py", "--fold 7: the plan in", "has folds 0..1")
    # Reuse fold 0's network for fold 1 (what --net is for: a network trained without that fold elsewhere).
    assert tool(["track", "--work", str(work), *tracker, "--seed", "0", "1", "--net", f"1={net0}",
                 "--no-progress"]) == 0
    runs = sorted((work / "results" / "ebm_atom" / "tiny").iterdir())
    assert [r.name for r in runs] == ["ebm_seed0", "ebm_seed1"]
    for r in runs:
        assert sorted(p.name for p in r.glob("*.txt") if "_time" not in p.name) == \
            ["clipA_1.txt", "clipA_2.txt", "clipB.txt", "clipC.txt"]
    a = np.loadtxt(runs[0] / "clipB.txt", delimiter=",")
    b = np.loadtxt(runs[1] / "clipB.txt", delimiter=",")
    assert a.shape == (6, 4) and not np.array_equal(a, b)  # the seed changes the candidate boxes

    capsys.readouterr()
    assert tool(["report", "--work", str(work), *tracker, "--json", str(tmp_path / "cv.json")]) == 0
    out = capsys.readouterr().out
    assert "4 sequences (24 frames) in 2 folds, otb protocol" in out and "| clipC |" in out
    rep = json.loads((tmp_path / "cv.json").read_text())["trackers"]["ebm_atom/tiny"]
    aucs = [r["auc"] for r in rep["runs"]]
    assert len(aucs) == 2 and rep["mean"]["auc"] == pytest.approx(np.mean(aucs))
    assert rep["std"]["auc"] == pytest.approx(np.std(aucs)) and 0 < rep["mean"]["auc"] <= 100
    assert set(rep["per_fold"]) == {"0", "1"} and set(rep["per_sequence"]) == {"clipA_1", "clipA_2", "clipB", "clipC"}

    # Runs with another network set (another training seed) join the same tracker's spread; --network picks.
    assert tool(["track", "--work", str(work), *tracker, "--network", "other", "--net", f"0={net0}",
                 "--net", f"1={net0}", "--no-progress"]) == 0
    assert (work / "results" / "ebm_atom" / "tiny" / "other_seed0" / "clipC.txt").is_file()
    capsys.readouterr()
    assert tool(["report", "--work", str(work), *tracker, "--json", str(tmp_path / "all.json")]) == 0
    assert len(json.loads((tmp_path / "all.json").read_text())["trackers"]["ebm_atom/tiny"]["runs"]) == 3
    assert tool(["report", "--work", str(work), *tracker, "--network", "ebm", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["trackers"]["ebm_atom/tiny"]["runs"] == rep["runs"]

    assert tool(["report", "--work", str(work), "--tracker", "ebm_atom/other"]) == 2
    one_line_error(capsys.readouterr().err, "cross_validate_tracker.py", "no results of --tracker ebm_atom/other")
