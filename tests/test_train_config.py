"""``omkit train --config RUN/config.json`` reruns a recorded run exactly (budgets included),
options given explicitly override it, and what it cannot use is one line naming it."""
from __future__ import annotations

import json

import torch

from omkit.cli import main as cli_main
from omkit.data import synthetic


def _weights(run):
    return torch.load(run / "model.pt", map_location="cpu", weights_only=True)["state_dict"]


def test_a_recorded_run_trains_again_identically_and_flags_override(tmp_path, capsys):
    synthetic.make_dataset(tmp_path / "data", num_cases=2, shape=(16, 32, 32), seed=7)
    first = tmp_path / "first"
    args = ["train", "--preset", "omnet_cga", "-i", str(tmp_path / "data"), "-o", str(first), "--width", "0.125",
            "--patch-size", "8,16,16", "--stage-epochs", "0,0,1", "--patches-per-epoch", "8", "--batch-per-task", "2",
            "--augment", "mirror+gamma:0.5", "--max-steps", "3", "--cache-dir", str(tmp_path / "cache"),
            "--threads", "1", "--device", "cpu", "--no-progress"]
    threads = torch.get_num_threads()
    try:
        assert cli_main(args) == 0, capsys.readouterr().err
        again = tmp_path / "again"
        assert cli_main(["train", "--config", str(first / "config.json"), "-o", str(again), "--no-progress"]) == 0
        shorter = tmp_path / "shorter"
        assert cli_main(["train", "--config", str(first / "config.json"), "-o", str(shorter), "--max-steps", "2",
                         "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    recorded = json.loads((again / "config.json").read_text())["config"]
    assert recorded["augment"] == "mirror+gamma:0.5" and recorded["max_steps"] == 3
    assert json.loads((again / "metrics.json").read_text())["steps"] == 3
    a, b = _weights(first), _weights(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((shorter / "metrics.json").read_text())["steps"] == 2
    # what it cannot use: one line each, nothing written
    capsys.readouterr()
    for bad, said in (
        (["--config", str(tmp_path / "data"), "-o", str(tmp_path / "x")], "not a readable omkit run configuration"),
        (["--config", str(first / "config.json"), "--recipe", "cpu-budget", "-o", str(tmp_path / "x")],
         "--recipe and --config exclude each other"),
        (["-o", str(tmp_path / "x")], "-i/--input DATA is required"),
    ):
        assert cli_main(["train", *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "x").exists()
