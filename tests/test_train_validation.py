"""Training you can watch: ``--val-every N`` scores the held-out cases every N steps and at
the end (metrics.csv, validation.csv, the loss-curve figure), keeps the best model as
best.pt, changes nothing of the training itself, and carries over a resume."""
from __future__ import annotations

import csv

import pytest
import torch

from omkit.checkpoint import load_model
from omkit.data import synthetic

from conftest import cli_in_process


def _args(data, run, cache, steps, *extra, folds=True):
    return ["train", "--preset", "omnet_cga", "-i", str(data), "-o", str(run), "--width", "0.125",
            "--patch-size", "8,16,16", "--stage-epochs", "0,0,1", "--patches-per-epoch", "4000",
            "--batch-per-task", "2", "--max-steps", str(steps), "--checkpoint-every", "100000", "--log-every", "1",
            "--cache-dir", str(cache), "--seed", "3", "--threads", "1", "--device", "cpu", "--no-progress",
            *(["--folds", "2", "--fold", "0"] if folds else []), *extra]


def _weights(run):
    return torch.load(run / "model.pt", map_location="cpu", weights_only=True)["state_dict"]


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation")
    synthetic.make_dataset(root / "data", num_cases=4, shape=(16, 32, 32), seed=4)
    return root


def test_validation_scores_keeps_the_best_and_changes_no_step(data, tmp_path, capsys):
    cache = data / "cache"
    code, out = cli_in_process(_args(data / "data", tmp_path / "watched", cache, 5, "--val-every", "2"), capsys)
    assert code == 0, out.err
    code, out = cli_in_process(_args(data / "data", tmp_path / "plain", cache, 5), capsys)
    assert code == 0, out.err
    watched, plain = _weights(tmp_path / "watched"), _weights(tmp_path / "plain")
    assert all(torch.equal(watched[k], plain[k]) for k in plain)  # validating changes no step

    rows = _rows(tmp_path / "watched" / "validation.csv")
    assert [int(r["step"]) for r in rows] == [2, 4, 5]  # every 2 steps, and the last
    for r in rows:
        dice = [float(r[f"val_dice_{x}"]) for x in ("wt", "tc", "et")]
        assert all(0.0 <= d <= 1.0 for d in dice) and abs(float(r["val_dice_mean"]) - sum(dice) / 3) < 1e-6
    metrics = {int(r["step"]): r for r in _rows(tmp_path / "watched" / "metrics.csv")}
    assert all(metrics[s]["val_dice_mean"] for s in (2, 4, 5)) and not metrics[3]["val_dice_mean"]
    assert not any(r["val_dice_mean"] for r in _rows(tmp_path / "plain" / "metrics.csv"))

    best_step = max(rows, key=lambda r: (float(r["val_dice_mean"]), -int(r["step"])))["step"]
    model, card = load_model(tmp_path / "watched" / "best.pt")
    assert card.training["best_step"] == int(best_step)
    assert abs(card.training["val_dice_mean"] - max(float(r["val_dice_mean"]) for r in rows)) < 1e-6  # validation.csv keeps 6 decimals
    assert not (tmp_path / "plain" / "best.pt").exists() and not (tmp_path / "plain" / "validation.csv").exists()


def test_validation_resumes_with_its_scores(data, tmp_path, capsys):
    cache = data / "cache"
    code, out = cli_in_process(_args(data / "data", tmp_path / "straight", cache, 4, "--val-every", "2"), capsys)
    assert code == 0, out.err
    code, out = cli_in_process(_args(data / "data", tmp_path / "resumed", cache, 2, "--val-every", "2"), capsys)
    assert code == 0, out.err
    code, out = cli_in_process(_args(data / "data", tmp_path / "resumed", cache, 4, "--val-every", "2") + ["--resume", "auto"],
                     capsys)
    assert code == 0, out.err
    assert _rows(tmp_path / "resumed" / "validation.csv") == _rows(tmp_path / "straight" / "validation.csv")
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_validation_needs_cases(data, tmp_path, capsys):
    code, out = cli_in_process(_args(data / "data", tmp_path / "run", data / "cache", 2, "--val-every", "2", folds=False),
                     capsys)  # no fold held out, no --val-input
    assert code == 2 and "--val-every: no validation cases" in out.err


def test_tensorboard_event_files(data, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    code, out = cli_in_process(_args(data / "data", run, data / "cache", 3, "--val-every", "2", "--tensorboard"), capsys)
    assert code == 0, out.err
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/task1", "loss/total", "lr", "validation/dice_mean", "validation/dice_wt"} <= tags
    assert [e.step for e in events.Scalars("loss/total")] == [1, 2, 3]
    assert [e.step for e in events.Scalars("validation/dice_mean")] == [2, 3]
    assert events.Scalars("validation/dice_mean")[0].value == pytest.approx(
        float(_rows(run / "validation.csv")[0]["val_dice_mean"]), abs=1e-6)
