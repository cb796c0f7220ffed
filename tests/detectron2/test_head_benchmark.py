"""The energy-head benchmark (ebm_refine.detectron2.head_benchmark, tools/energy_head_benchmark.py)."""
import json
import math

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from ebm_refine.detectron2.head_benchmark import format_head_table, refinement_time, run_head_benchmark

from d2_helpers import small_cfg
from test_multi_run import SMALL_OPTS


@pytest.mark.parametrize("head", ["FCEnergyHead", "WeldonEnergyHead"])
def test_refinement_time_measures_the_refinement_of_every_image(synthetic_names, tmp_path, head):
    cfg = small_cfg(tmp_path, extra=["MODEL.EBM.HEAD.NAME", head, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.save({"model": model.state_dict()}, tmp_path / "model.pth")
    t = refinement_time(cfg, str(tmp_path / "model.pth"), num_images=3)
    assert t["images"] == 3  # the warm-up image is not counted
    assert t["refine_ms_per_image"] > 0 and t["refine_cpu_ms_per_image"] > 0
    assert 0 < t["detections_per_image"] <= cfg.TEST.DETECTIONS_PER_IMAGE


def test_table_reports_mean_and_std_over_seeds():
    def entry(values):
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        return {"mean": mean, "std": std, "values": values}

    row = {k: entry([1.0, 3.0]) for k in ("AP", "AP75", "AP_unrefined", "AP75_unrefined", "refine_ms_per_image",
                                          "refine_cpu_ms_per_image", "detections_per_image")}
    row["head_parameters"] = entry([12345, 12345])
    table = format_head_table({"seeds": [0, 1], "summary": {"WELDON": row}})
    assert "mean ± std over 2 training seeds (SEED 0, 1)" in table
    assert "| WELDON | 12,345 | 2.00 ± 1.41 | 2.00 ± 1.41 |" in table


@pytest.mark.slow
def test_quick_benchmark_of_both_heads_and_reuse_of_finished_runs(synthetic_names, tmp_path, capsys):
    # tools/energy_head_benchmark.py in quick mode: two short trainings on the small test split (~20-60 s).
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "energy_head_benchmark_tool", Path(__file__).resolve().parents[2] / "tools" / "energy_head_benchmark.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--quick", "--seeds", "0", "--iters", "6", "--timing-images", "2", "--output", str(tmp_path),
                      *SMALL_OPTS]) == 0
    printed = capsys.readouterr().out
    assert "| FC | 870,149 |" in printed and "| WELDON | 17,925 |" in printed
    res = json.loads((tmp_path / "energy_head_benchmark.json").read_text())
    assert list(res["summary"]) == ["FC", "WELDON"]
    fc, weldon = res["summary"]["FC"], res["summary"]["WELDON"]
    assert "significance" in res  # the heads' per-box comparison, or the note why it was skipped
    # Heads of the small config (64 FPN channels, FC_DIM 256, 5 classes): 3136*256+256 + 256*256+256 + 256*5+5,
    # and WELDON_HIDDEN 256: 64*256+256 + 256*5+5.
    assert fc["head_parameters"]["mean"] == 3136 * 256 + 256 + 256 * 256 + 256 + 256 * 5 + 5
    assert weldon["head_parameters"]["mean"] == 64 * 256 + 256 + 256 * 5 + 5
    for s in (fc, weldon):
        assert 0 <= s["AP"]["mean"] <= 100 and s["refine_ms_per_image"]["mean"] > 0
        assert math.isnan(s["AP"]["std"])  # one seed: no spread to report
    assert (tmp_path / "WELDON" / "seed0" / "ebm" / "model_final.pth").is_file()
    again = run_head_benchmark(tmp_path, seeds=[0], quick=True, iters=6, timing_images=2, opts=SMALL_OPTS)
    assert again["runs"] == res["runs"]  # finished runs were read back, not trained again


def test_heads_are_paired_on_the_ground_truth_boxes_both_matched(tmp_path):
    from ebm_refine.detectron2.head_benchmark import _paired_heads
    from ebm_refine.evaluation import PerSampleErrors

    rng = np.random.default_rng(0)
    ids = [f"{i}/{i}" for i in range(30)]
    for s in (0, 1):
        for head, worse in (("FC", 0.0), ("WELDON", 0.05)):
            keep = ids if head == "FC" else ids[2:]  # WELDON's detector missed two boxes
            u = rng.uniform(0.1, 0.4, len(keep))
            d = PerSampleErrors("1 - IoU", "box")
            d.add_run(f"seed{s}", {"unrefined": u, "EBM": 0.1 + worse + rng.normal(0, 0.01, len(keep))}, keep)
            (tmp_path / head / f"seed{s}").mkdir(parents=True)
            d.save(str(tmp_path / head / f"seed{s}" / "per_box_errors.json"))
    text, report = _paired_heads(tmp_path, ["FC", "WELDON"], [0, 1])
    fc_weldon = report["FC vs WELDON"]
    assert [r["n"] for r in fc_weldon["per_run"]] == [28, 28] and fc_weldon["pooled"]["n"] == 28
    assert fc_weldon["winner"] == "FC" and fc_weldon["pooled"]["median_diff"] == pytest.approx(-0.05, abs=0.01)
    assert "FC vs WELDON (1 - IoU" in text
    (tmp_path / "WELDON" / "seed1" / "per_box_errors.json").unlink()
    text, report = _paired_heads(tmp_path, ["FC", "WELDON"], [0, 1])
    assert "skipped" in report and "WELDON/seed1/per_box_errors.json is missing" in text
