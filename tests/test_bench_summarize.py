"""benchmarks/summarize.py: the tables and the ratio plot of RESULTS.md, from pytest-benchmark JSON."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SUMMARIZE = Path(__file__).resolve().parents[1] / "benchmarks" / "summarize.py"


@pytest.fixture(scope="module")
def summarize():
    spec = importlib.util.spec_from_file_location("bench_summarize", SUMMARIZE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(group, median, name, params=None, **info):
    return {"group": group, "name": name, "params": params, "extra_info": info,
            "stats": {"median": median, "mean": median, "stddev": 0.0, "rounds": 3}}


@pytest.fixture
def bench_json(tmp_path):
    data = {"datetime": "2026-11-27T00:00:00", "machine_info": {"cpu": {"brand_raw": "Test CPU"}}, "benchmarks": [
        _bench("cga forward paper-20", 0.100, "t_eager", impl="eager"),
        _bench("cga forward paper-20", 0.020, "t_fused", impl="fused", bytes_moved=2e8, copy_gb_per_s=20.0),
        _bench("case", 40.0, "t[omnet_cga-paper]", {"variant": "omnet_cga-paper"}, tiles={"onepass": 900}, peak_rss_mb=900.0),
        _bench("case", 100.0, "t[mc3-paper]", {"variant": "mc3-paper"}, tiles={"task1": 900, "task2": 90}, peak_rss_mb=1500.0),
        _bench("case", 20.0, "t[omnet_cga-large]", {"variant": "omnet_cga-large"},
               dice_vs_paper_tiles={"WT": 0.99, "TC": 0.98, "ET": 0.97},
               dice_vs_ground_truth={"WT": 0.8, "TC": 0.7, "ET": 0.6}, peak_rss_mb=1000.0),
        _bench("tiles gather+stitch", 0.4, "t_reference", impl="reference"),
        _bench("tiles gather+stitch", 0.2, "t_fused", impl="fused"),
        _bench("tiles gather+stitch", 2.0, "t_reference_labels", impl="reference-labels"),
        _bench("tiles gather+stitch", 0.5, "t_fused_labels", impl="fused-labels"),
        _bench("train", 2.0, "t[omnet]", {"preset": "omnet"}, preset="omnet", patches_per_step=70, peak_cuda_mb=3000.0),
        _bench("train", 4.0, "t[mc3]", {"preset": "mc3"}, preset="mc3", patches_per_step=60, peak_cuda_mb=3500.0),
    ]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    return path


def test_tables_show_ratios_to_each_groups_baseline(summarize, bench_json, capsys, tmp_path):
    png = tmp_path / "ratios.png"
    assert summarize.main([str(bench_json), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "Test CPU" in out
    assert "| fused | 20.0 | 20.0 | 0.0 | 3 | 10.00 | 50.0 | 5.00x |" in out
    # whole-case rows: seconds, ratio to the paper-tile one-pass run, memory, tiles, tiling Dice
    assert "| mc3-paper | 100.00 | 0.40x | 1500 (RSS) | task1 900, task2 90 |  |  |" in out
    assert "| omnet_cga-large | 20.00 | 2.00x | 1000 (RSS) |  | 0.990 / 0.980 / 0.970 | 0.800 / 0.700 / 0.600 |" in out
    # training rows: patches/s and the speed relative to omnet
    assert "| mc3 | 4.00 | 60 | 15.0 | 0.50x | 3500 (CUDA) |" in out
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_main_ratios_pair_each_row_with_its_baseline(summarize, bench_json):
    groups = summarize.group_rows(json.loads(bench_json.read_text()))
    ratios = dict(summarize.main_ratios(groups))
    assert ratios == {
        "cga forward paper-20: fused vs eager": pytest.approx(5.0),
        "case: mc3-paper vs omnet_cga-paper": pytest.approx(0.4),
        "case: omnet_cga-large vs omnet_cga-paper": pytest.approx(2.0),
        # label stitching against the label reference, which is no row of its own
        "tiles gather+stitch: fused vs reference": pytest.approx(2.0),
        "tiles gather+stitch: fused-labels vs reference-labels": pytest.approx(4.0),
        "train: mc3 vs omnet": pytest.approx(0.5),
    }


def test_goals_compare_the_rows_the_gpu_check_measures(summarize):
    groups = summarize.group_rows({"benchmarks": [
        _bench("case", 1.0, "a", {"variant": "omnet_cga-paper"}, width=1.0),
        _bench("case", 2.5, "b", {"variant": "mc3-paper"}, width=1.0),
        _bench("case", 1.2, "c", {"variant": "omnet_cga-monai"}, width=1.0),
        _bench("case", 1.5, "d", {"variant": "omnet_cga-file"}, width=1.0),
        _bench("case", 0.2, "k", {"variant": "omnet_cga-dense"}, width=1.0, device="cuda"),
        _bench("cga forward paper-20", 0.030, "e", impl="compiled"),
        _bench("cga forward paper-20", 0.010, "f", impl="fused"),
        _bench("cga forward+backward paper-20", 0.020, "g", impl="compiled"),
        _bench("cga forward+backward paper-20", 0.010, "h", impl="fused"),
        _bench("train", 1.0, "i", {"preset": "omnet_cga"}, preset="omnet_cga", peak_cuda_mb=3000.0, width=1.0,
               batch_per_task=20),
        _bench("train", 0.8, "j", {"preset": "omnet_cga+fp16"}, preset="omnet_cga+fp16", peak_cuda_mb=2000.0,
               width=1.0),
    ]})
    table = {goal: (measured, verdict) for goal, _, measured, verdict in summarize.goals(groups)}
    assert [g for g, _ in summarize.GOALS] == list(table)
    rows = list(table.values())
    assert rows[0] == ("1.50 s", "met")
    assert rows[1] == ("2.50x (2.50 s vs 1.00 s)", "met")
    assert rows[2] == ("1.20x (1.20 s vs 1.00 s)", "missed")
    assert rows[3] == ("forward paper-20 3.00x, forward+backward paper-20 2.00x", "met")
    assert rows[4] == ("omnet_cga 2.93 GB, omnet_cga+fp16 1.95 GB (batch 20 per task)", "met")
    assert rows[5] == ("5.00x (1.00 s vs 0.20 s)", "met")
    assert rows[6] == ("6.00x (1.20 s vs 0.20 s)", "met")
    assert rows[7] == ("0.20 s", "met")
    # a smoke run (not full width) or a CPU run cannot say
    small = summarize.group_rows({"benchmarks": [
        _bench("case", 0.1, "d", {"variant": "omnet_cga-file"}, width=0.125),
        _bench("cga forward smoke", 0.030, "e", impl="compiled"),
        _bench("cga forward smoke", 0.010, "f", impl="fused"),
        _bench("train", 1.0, "i", {"preset": "omnet_cga"}, preset="omnet_cga", peak_rss_mb=900.0, width=0.125)]})
    verdicts = [v for *_, v in summarize.goals(small)]
    assert verdicts == ["n/a"] * len(summarize.GOALS)
    lines = summarize.goals_table(small)
    assert lines[0] == "| goal | target | measured | verdict |" and len(lines) == 2 + len(summarize.GOALS)
