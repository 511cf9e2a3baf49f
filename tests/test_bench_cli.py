"""``omkit bench``: any registered attention and a model on a case, timed, saved as JSON
with where it ran, compared with an earlier result; bad arguments are one line."""
from __future__ import annotations

import json

import pytest
import torch

from omkit.cli import main
from omkit.models.window_protocol import PooledChannelAttention

from conftest import model_workspace, plugin_fixture

SHAPE = ["--shape", "1,8,4,8,8", "--repeats", "2", "--warmup", "0", "--device", "cpu", "--no-progress"]


class MaxChannelGate(PooledChannelAttention):
    """A third party's attention, registered in code: benchmarked like the built-ins."""

    def __init__(self, channels):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(channels))

    def pooled_terms(self, x):
        return (x,)

    def channel_scale(self, sums, count):
        return torch.sigmoid(sums[0] / count * self.gain)


plugin = plugin_fixture("bench_test_plugin", scope="function", attention={"gate_bench_test": MaxChannelGate})


def test_bench_attention_times_a_plugin_against_the_builtins_and_compares(tmp_path, capsys):
    first = tmp_path / "first.json"
    assert main(["bench", "attention", "gate_bench_test", "--against", "cga,se", *SHAPE, "-o", str(first)]) == 0
    out = capsys.readouterr().out
    assert "omkit bench attention on " in out and "torch " in out
    result = json.loads(first.read_text())
    assert [r["name"] for r in result["rows"]] == ["gate_bench_test", "cga", "se"]
    for row in result["rows"]:
        assert row["median_s"] > 0 and row["iqr_s"] >= 0 and row["repeats"] == 2 and row["pass"] == "forward"
        assert row["parameters"] > 0 and row["mvoxels_per_s"] > 0 and "peak_rss_delta_mb" in row
    assert {"machine", "cpus", "torch", "omkit", "date", "device"} <= set(result["environment"])
    assert result["rows"][1]["kind"] == "guided" and result["rows"][0]["kind"] == "unguided"

    second = tmp_path / "second.json"
    assert main(["bench", "attention", "gate_bench_test", "cga", "--backward", *SHAPE, "-o", str(second),
                 "--compare", str(first)]) == 0
    out = capsys.readouterr().out
    assert f"against {first}" in out and "new / old time" in out
    ratios = [line for line in out.splitlines() if " -> " in line and " x" in line]
    assert len(ratios) == 2 and ratios[0].split()[0] == "gate_bench_test"
    assert json.loads(second.read_text())["rows"][0]["pass"] == "forward+backward"
    # nothing is overwritten without --force
    assert main(["bench", "attention", "se", *SHAPE, "-o", str(second)]) == 2
    assert f"--output {second} exists; pass --force" in capsys.readouterr().err


def test_bench_case_times_each_inference_mode(tmp_path, capsys):
    root = model_workspace(tmp_path, shape=(16, 40, 40))
    case = next(p for p in (root / "data").iterdir() if p.is_dir())
    out_file = tmp_path / "case.json"
    assert main(["bench", "case", "-m", str(root / "model.pt"), "-i", str(case), "--inference", "dense,tiles",
                 "--repeats", "1", "--warmup", "0", "--device", "cpu", "--no-progress", "-o", str(out_file)]) == 0
    rows = json.loads(out_file.read_text())["rows"]
    assert [r["name"] for r in rows] == ["dense", "tiles"]
    assert all(r["median_s"] > 0 and r["brain_voxels"] > 0 and r["tiles"] for r in rows)
    assert "dense" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["attention", "nope_attention"], "attention 'nope_attention' is not registered; registered: "),
    (["attention", "se", "--shape", "1,2,3"], "--shape must be paper, inference or B,C,D,H,W"),
    (["attention", "se", "--repeats", "0"], "--repeats must be >= 1"),
    (["case", "-m", "x.pt", "--inference", "dense,fast"], "--inference takes modes among dense, tiles, auto"),
])
def test_bench_errors_are_one_line(args, message, capsys, tmp_path):
    assert main(["bench", *args, "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bench_compare_refuses_what_is_not_a_result(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["bench", "attention", "se", *SHAPE, "--compare", str(bad)]) == 2
    assert f"--compare {bad}: not an omkit bench result" in capsys.readouterr().err
