"""``omkit demo``: argument handling and a tiny synthetic run end to end (the
real ten-minute job is ``make demo``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from omkit.cli import main
from omkit.cli.demo import default_sample_data

TINY = ["--synthetic", "--synthetic-cases", "4", "--synthetic-shape", "16,40,40", "--width", "0.125",
        "--max-minutes", "0.5", "--max-steps", "2", "--patches-per-epoch", "2,2,2", "--batch-per-task", "2",
        "--tile-size", "8,16,16", "--tile-keep", "8,16,16"]


def test_sample_data_location(monkeypatch, tmp_path):
    monkeypatch.setenv("OMKIT_SAMPLE_DATA", str(tmp_path))
    assert default_sample_data() == tmp_path
    monkeypatch.delenv("OMKIT_SAMPLE_DATA")
    assert default_sample_data().parts[-3:] == ("shared", "data", "brats2018-sample")


@pytest.mark.parametrize("argv,message", [
    (["-i", "/no/such/folder"], "/no/such/folder"),
    (["--max-minutes", "0"], "--max-minutes"),
    (["--synthetic", "--synthetic-cases", "2"], "--synthetic-cases"),
    (["--tile-size", "10,16,16"], "--tile-size"),
])
def test_bad_arguments(argv, message, tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_refuses_a_non_empty_output_folder(tmp_path, capsys):
    (tmp_path / "something").write_text("x")
    assert main(["demo", "-o", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["something"]


def test_tiny_synthetic_run(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "SYNTHETIC" in printed and "with post-processing" in printed and str(out) in printed
    held_out = [p.name for p in (out / "predictions").iterdir()]
    assert len(held_out) == 1 and held_out[0].endswith(".nii.gz")
    assert (out / "run" / "model.pt").is_file()
    assert (out / "overlays" / held_out[0].replace(".nii.gz", ".png")).is_file()
    rows = (out / "evaluation" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "case,region,dice,ppv,sensitivity,hd95" and len(rows) == 4
    assert Path(out / "metrics_table.txt").read_text().count("WT") == 2
