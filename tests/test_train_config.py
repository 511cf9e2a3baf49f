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


def test_fold_all_trains_every_fold_and_predict_ensembles_the_run_folder(tmp_path, capsys):
    import omkit
    from omkit.checkpoint import ModelFileError, model_files

    synthetic.make_dataset(tmp_path / "data", num_cases=4, shape=(16, 32, 32), seed=8)
    run = tmp_path / "run"
    args = ["train", "--preset", "omnet_cga", "-i", str(tmp_path / "data"), "-o", str(run), "--width", "0.125",
            "--patch-size", "8,16,16", "--stage-epochs", "0,0,1", "--patches-per-epoch", "8", "--batch-per-task", "2",
            "--max-steps", "2", "--folds", "2", "--fold", "all", "--cache-dir", str(tmp_path / "cache"),
            "--threads", "1", "--device", "cpu", "--no-progress"]
    threads = torch.get_num_threads()
    try:
        assert cli_main(args) == 0, capsys.readouterr().err
        before = [(run / f"fold_{k}" / "model.pt").read_bytes() for k in range(2)]
        assert cli_main(args + ["--resume", "auto"]) == 0  # a job run again: every fold has reached its budget
        assert [(run / f"fold_{k}" / "model.pt").read_bytes() for k in range(2)] == before
        case = sorted(p for p in (tmp_path / "data").iterdir() if p.is_dir())[0]
        assert cli_main(["predict", "-i", str(case), "-m", str(run), "-o", str(tmp_path / "pred"), "--device", "cpu",
                         "--no-progress"]) == 0, capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)
    held_out = [json.loads((run / f"fold_{k}" / "config.json").read_text())["held_out"] for k in range(2)]
    assert sorted(held_out[0] + held_out[1]) == sorted(p.name for p in (tmp_path / "data").iterdir() if p.is_dir())
    assert [json.loads((run / f"fold_{k}" / "config.json").read_text())["config"]["fold"] for k in range(2)] == [0, 1]
    assert model_files([run]) == [run / "fold_0" / "model.pt", run / "fold_1" / "model.pt"]
    assert model_files(run / "fold_1") == [run / "fold_1" / "model.pt"]
    assert len(omkit.Segmenter.from_files(run, device="cpu").predictor.models) == 2
    assert list((tmp_path / "pred").glob("*.nii.gz"))
    try:
        model_files(tmp_path / "data")
    except ModelFileError as exc:
        assert "a folder without model.pt or fold_*/model.pt" in str(exc)
    else:
        raise AssertionError("a folder without models was accepted")
