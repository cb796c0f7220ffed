"""The significance protocol: agreement with scipy's Wilcoxon test, median-interval coverage, pooling, CLI."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ebm_refine.evaluation import (
    PerSampleErrors,
    compare_methods,
    compare_runs,
    holm_adjust,
    load_per_sample_errors,
    median_ci,
    paired_test,
)
from ebm_refine.utils import UserError
from ebm_refine.utils.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]


def _compare_runs_script():
    spec = importlib.util.spec_from_file_location("compare_runs_tool", ROOT / "tools" / "compare_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("n, zeros, ties", [(12, 0, False), (40, 3, False), (300, 10, True)])
def test_wilcoxon_p_value_and_statistic_agree_with_scipy(n, zeros, ties):
    rng = np.random.default_rng(n)
    b = rng.gamma(2.0, 0.1, n)
    a = b + rng.normal(-0.02, 0.05, n)
    if ties:
        a = np.round(a, 2)
        b = np.round(b, 2)
    a[:zeros] = b[:zeros]  # exact zeros are dropped by the test
    s = paired_test(a, b, names=("new", "old"))
    ref = stats.wilcoxon(a - b)
    assert s.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert s.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert s.n == n and s.n_nonzero == int(np.count_nonzero(a - b))
    assert s.median_diff == pytest.approx(np.median(a - b))
    # The two signed-rank sums add up to n'(n'+1)/2 and scipy's statistic is the smaller one.
    m = s.n_nonzero
    assert s.rank_sum_a_better + s.rank_sum_b_better == pytest.approx(m * (m + 1) / 2)
    assert min(s.rank_sum_a_better, s.rank_sum_b_better) == pytest.approx(ref.statistic)


def test_winner_follows_the_signed_ranks_and_needs_significance():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.1, 0.5, 200)
    better = paired_test(b - 0.05 + rng.normal(0, 0.02, 200), b, names=("ebm", "none"))
    assert better.winner == "ebm" and better.p_value < 1e-10 and better.ci_high < 0
    worse = paired_test(b + 0.05 + rng.normal(0, 0.02, 200), b, names=("ebm", "none"))
    assert worse.winner == "none" and worse.p_value < 1e-10 and worse.ci_low > 0  # "none" the method wins
    noise = paired_test(b + rng.normal(0, 0.02, 200), b, names=("x", "y"), alpha=1e-6)
    assert noise.winner == "none"  # not significant at this alpha
    same = paired_test(b, b, names=("x", "y"))
    assert same.p_value == 1.0 and same.winner == "none" and same.n_nonzero == 0 and same.median_diff == 0.0


def test_order_statistic_interval_ranks_and_level():
    x = np.arange(1.0, 11.0)  # n = 10: the 95 % interval is [x_(2), x_(9)], coverage 1 - 2 * 11/1024
    lo, hi, level = median_ci(x)
    assert (lo, hi) == (2.0, 9.0)
    assert level == pytest.approx(1 - 2 * 11 / 1024)
    lo, hi, level = median_ci(np.arange(5.0))  # too few samples for 95 %: the range, with its real level
    assert (lo, hi) == (0.0, 4.0) and level == pytest.approx(1 - 2 / 32)


@pytest.mark.parametrize("method, n, sims, band", [("order", 41, 4000, (0.94, 0.975)),
                                                   ("bootstrap", 60, 600, (0.90, 0.98))])
def test_median_interval_covers_the_true_median_at_about_the_nominal_rate(method, n, sims, band):
    # Skewed differences (shifted exponential): true median = shift + ln 2.
    rng = np.random.default_rng(1)
    true_median = -0.1 + np.log(2.0)
    hits, levels = 0, []
    for k in range(sims):
        d = -0.1 + rng.exponential(1.0, n)
        lo, hi, level = median_ci(d, 0.95, method, n_boot=400, seed=k)
        hits += lo <= true_median <= hi
        levels.append(level)
    coverage = hits / sims
    assert band[0] <= coverage <= band[1]
    if method == "order":  # the exact binomial level is what it achieves (within Monte Carlo error)
        assert abs(coverage - np.mean(levels)) < 3 * np.sqrt(0.05 * 0.95 / sims)


def test_pooling_averages_shared_samples_and_concatenates_otherwise():
    rng = np.random.default_rng(3)
    ids = [f"img{i}" for i in range(50)]
    base = rng.uniform(0, 1, 50)
    runs_a, runs_b, run_ids = [], [], []
    for r in range(3):
        perm = rng.permutation(50)  # every run lists the same samples in its own order
        a = base - 0.05 + rng.normal(0, 0.05, 50)
        b = base + rng.normal(0, 0.05, 50)
        runs_a.append(a[perm]), runs_b.append(b[perm]), run_ids.append([ids[i] for i in perm])
    c = compare_runs(runs_a, runs_b, ids=run_ids, names=("ebm", "none"), metric="1 - IoU")
    assert c.pooling == "mean over runs" and c.pooled.n == 50 and len(c.per_run) == 3
    order = {k: j for j, k in enumerate(sorted(ids))}
    mean_a = np.zeros(50)
    mean_b = np.zeros(50)
    for a, b, i in zip(runs_a, runs_b, run_ids):
        idx = [order[k] for k in i]
        mean_a[idx] += a / 3
        mean_b[idx] += b / 3
    assert c.pooled.p_value == pytest.approx(stats.wilcoxon(mean_a - mean_b).pvalue, rel=1e-9)
    assert c.winner == "ebm"
    table = c.format_table()
    assert "pooled (3 runs)" in table and "| run 0 |" in table and "1 - IoU" in table
    # Different samples per run: concatenated, and the output says why that is optimistic.
    c2 = compare_runs([runs_a[0], runs_a[1][:30]], [runs_b[0], runs_b[1][:30]])
    assert c2.pooling == "concatenated" and c2.pooled.n == 80 and c2.notes
    with pytest.raises(ValueError, match="run 1"):
        compare_runs([runs_a[0], runs_a[1]], [runs_b[0], runs_b[1][:30]])


def test_holm_and_every_pair():
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    rng = np.random.default_rng(4)
    base = rng.uniform(0, 1, 100)
    errs = {"ebm": [base - 0.1], "iounet": [base - 0.05 + rng.normal(0, 0.01, 100)], "none": [base]}
    out = compare_methods(errs)
    assert [(c.name_a, c.name_b) for c in out] == [("ebm", "iounet"), ("ebm", "none"), ("iounet", "none")]
    assert [c.winner for c in out] == ["ebm", "ebm", "iounet"]
    assert all(c.p_holm >= c.pooled.p_value for c in out)


def _write_errors(path: Path) -> None:
    rng = np.random.default_rng(5)
    data = PerSampleErrors(metric="1 - IoU", unit="box")
    for r in range(2):
        base = rng.uniform(0, 0.5, 40)
        data.add_run(f"seed{r}", {"unrefined": base, "refined": base - 0.03 + rng.normal(0, 0.01, 40)},
                     ids=[str(i) for i in range(40)])
    data.save(str(path))


def test_per_sample_file_round_trip_and_bad_files(tmp_path):
    path = tmp_path / "errors.json"
    _write_errors(path)
    data = load_per_sample_errors(str(path))
    assert data.methods == ["unrefined", "refined"] and data.unit == "box" and len(data.runs) == 2
    assert data.ids() is not None and len(data.method_runs("refined")[1]) == 40
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "ebm_refine.per_sample_errors/1", "runs": [{"errors": {"a": [1, "x"]}}]}))
    with pytest.raises(UserError, match=r"bad.json: runs\[0\]"):
        load_per_sample_errors(str(bad))
    bad.write_text(json.dumps({"format": "ebm_refine.per_sample_errors/1",
                               "runs": [{"errors": {"a": [1, 2], "b": [1]}}]}))
    with pytest.raises(UserError, match="same number of samples"):
        load_per_sample_errors(str(bad))


def test_compare_runs_tool(tmp_path, capsys):
    tool = _compare_runs_script()
    path = tmp_path / "errors.json"
    _write_errors(path)
    out_json = tmp_path / "cmp.json"
    assert run_cli(tool.main, [str(path), "--a", "refined", "--b", "unrefined", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "refined vs unrefined" in printed and "pooled (2 runs)" in printed
    res = json.loads(out_json.read_text())["refined vs unrefined"]
    assert res["winner"] == "refined" and res["pooling"] == "mean over runs" and res["pooled"]["n"] == 40
    assert res["pooled"]["median_diff"] < 0 and len(res["per_run"]) == 2
    # Plain files, one error per line, one per run and method.
    for name, values in (("a.txt", [0.1, 0.2, 0.3, 0.25]), ("b.txt", [0.2, 0.3, 0.35, 0.3])):
        (tmp_path / name).write_text("# errors\n" + "\n".join(map(str, values)) + "\n")
    assert run_cli(tool.main, ["--a-files", str(tmp_path / "a.txt"), "--b-files", str(tmp_path / "b.txt"),
                               "--names", "ebm", "none"]) == 0
    assert "ebm vs none" in capsys.readouterr().out
    # Expected failures: one line naming the file or option, exit status 2.
    assert run_cli(tool.main, [str(path), "--a", "refined", "--b", "nope"], prog="compare_runs.py") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err and "errors.json" in err
    assert run_cli(tool.main, [str(tmp_path / "missing.json")], prog="compare_runs.py") == 2
    assert "missing.json" in capsys.readouterr().err


def test_error_files_that_are_binary_empty_or_the_same_run_twice_are_refused(tmp_path):
    from ebm_refine.evaluation import PerSampleErrors, check_distinct_runs, load_per_sample_errors, read_error_column
    from ebm_refine.utils import UserError

    binary = tmp_path / "a.txt"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(UserError, match="a.txt: not a text file"):
        read_error_column(str(binary))
    empty = tmp_path / "empty.json"
    empty.write_text('{"format": "ebm_refine.per_sample_errors/1", "runs": [{"name": "0", "errors": {"A": [], "B": []}}]}')
    with pytest.raises(UserError, match=r"empty.json: runs\[0\].errors\['A'\] must be a non-empty"):
        load_per_sample_errors(str(empty))
    twice = PerSampleErrors()
    twice.add_run("seed0", {"A": [0.1, 0.2], "B": [0.3, 0.1]})
    twice.add_run("seed1", {"A": [0.1, 0.2], "B": [0.3, 0.1]})
    with pytest.raises(UserError, match="runs 'seed0' and 'seed1' hold identical errors"):
        check_distinct_runs(twice, "x.json")
    twice.runs[1].errors["B"] = twice.runs[1].errors["B"] + 0.01  # a real second run: accepted
    check_distinct_runs(twice, "x.json")
