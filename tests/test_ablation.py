"""The Table I ablation runner, end to end on tiny synthetic cases."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from omkit.cli import main
from omkit.data import synthetic

TINY = ["--width", "0.125", "--patch-size", "8,16,16", "--batch-per-task", "2", "--max-steps", "2",
        "--tile-size", "8,16,16", "--tile-stride", "4,8,8", "--tile-keep", "4,8,8"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation_data")
    synthetic.make_dataset(root, num_cases=5, shape=(16, 32, 32), seed=3)
    return root


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_cross_validation_table_and_resume(data_dir, tmp_path, capsys):
    out = tmp_path / "study"
    args = ["ablation", "-i", str(data_dir), "-o", str(out), "--rows", "mc1,omnet_cga", "--folds", "2", *TINY]
    assert main(args) == 0
    table = _read_csv(out / "ablation.csv")
    assert [r["row"] for r in table] == ["mc1", "mc1+p", "omnet_cga", "omnet_cga+p"]
    assert all(int(r["cases"]) == 5 for r in table)  # every case held out exactly once
    for r in table:
        for region in ("WT", "TC", "ET"):
            assert 0.0 <= float(r[f"dice_{region}"]) <= 1.0
    per_split = _read_csv(out / "ablation_per_split.csv")
    assert sorted((r["row"], r["split"]) for r in per_split if r["row"] == "mc1") == [("mc1", "fold0"), ("mc1", "fold1")]
    held = [set(json.loads((out / "runs" / "mc1" / f / "scores.json").read_text())["held_out"]) for f in ("fold0", "fold1")]
    assert not held[0] & held[1] and len(held[0] | held[1]) == 5
    markdown = (out / "ablation.md").read_text()
    assert "| OM-Net + CGA + p |" in markdown and "2-fold cross-validation" in markdown
    assert (out / "predictions" / "omnet_cga" / "fold1" / "post").is_dir()
    # the best and the worst held-out case of each row, drawn from the saved label maps
    per_case = _read_csv(out / "ablation_per_case.csv")
    # the false-tumor failure mode stays visible: precision and false-positive components per case
    assert all(r["fp_components"].isdigit() and r["fp_voxels"].isdigit() for r in per_case)
    assert all(0.0 <= float(r["ppv_WT"]) <= 1.0 and float(r["ppv_min_WT"]) <= float(r["ppv_WT"]) for r in table)
    assert "WT precision (mean / min)" in markdown and "false-positive components" in markdown
    # paired differences between the rows, per case, with a bootstrap interval
    paired = _read_csv(out / "ablation_paired.csv")
    dice_wt = [p for p in paired if (p["first"], p["second"], p["variant"], p["region"], p["metric"])
               == ("mc1", "omnet_cga", "post", "WT", "dice")]
    assert len(dice_wt) == 1 and int(dice_wt[0]["cases"]) == 5
    p = dice_wt[0]
    assert float(p["ci_low"]) <= float(p["mean_difference"]) <= float(p["ci_high"])
    assert p["beyond_noise"] == str(float(p["ci_low"]) > 0 or float(p["ci_high"]) < 0)
    assert "Paired differences of Dice" in markdown
    wt_rows = [r for r in per_case if r["region"] == "WT" and r["row"] == "omnet_cga" and r["variant"] == "post"]
    first = wt_rows[0]
    assert f"| {first['case']} |" in markdown and f"{float(first['dice']):.3f} / {float(first['ppv']):.2f} / " \
        f"{first['fp_components']}" in markdown
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert len(overlays) == 4 and all(name.endswith(".png") for name in overlays)
    for row in ("mc1", "omnet_cga"):
        mean = {}
        for r in per_case:
            if r["row"] == row and r["variant"] == "post":
                mean.setdefault(r["case"], []).append(float(r["dice"]))
        score = {case: sum(values) / 3 for case, values in mean.items()}
        drawn = {name.split("-", 2)[1]: name.split("-", 2)[2][:-4] for name in overlays if name.startswith(row + "-")}
        assert score[drawn["worst"]] == min(score.values()) and score[drawn["best"]] == max(score.values())

    # an interrupted study resumes: finished rows are not trained or scored again
    model = out / "runs" / "omnet_cga" / "fold0" / "model.pt"
    stamp = model.stat().st_mtime_ns
    (out / "runs" / "mc1" / "fold1" / "scores.json").unlink()
    assert main(args) == 0
    assert model.stat().st_mtime_ns == stamp
    assert (out / "runs" / "mc1" / "fold1" / "scores.json").exists()
    assert "Mean Dice per split" in capsys.readouterr().out


def test_holdout_with_kfold_ensemble_row(data_dir, tmp_path):
    out = tmp_path / "study"
    assert main(["ablation", "-i", str(data_dir), "-o", str(out), "--rows", "omnet", "--val-cases", "2",
                 "--ensemble", "2", "--no-postprocess", "--recipe", "cpu-budget", *TINY]) == 0
    # the recipe fills what TINY leaves unset; TINY's explicit width wins over the recipe's 0.25
    run_config = json.loads((out / "runs" / "omnet" / "holdout" / "config.json").read_text())["config"]
    assert run_config["recipe"] == "cpu-budget" and run_config["optimizer"] == "adam"
    assert run_config["width"] == 0.125 and run_config["samplers"][0] == "brain:1+dilated_tumor:1"
    table = _read_csv(out / "ablation.csv")
    assert [r["row"] for r in table] == ["omnet", "omnet_cga*"]
    assert all(int(r["cases"]) == 2 for r in table)
    members = sorted(p.name for p in (out / "runs" / "omnet_cga_ensemble" / "holdout").iterdir() if p.is_dir())
    assert members == ["member0", "member1"]
    assert len(list((out / "splits" / "train").iterdir())) == 3


def test_bad_arguments_are_one_line_errors(data_dir, tmp_path, capsys):
    assert main(["ablation", "-i", str(data_dir), "-o", str(tmp_path / "x"), "--rows", "omnet_xl"]) == 2
    assert "unknown preset(s) omnet_xl" in capsys.readouterr().err
    assert main(["ablation", "-i", str(data_dir), "-o", str(tmp_path / "x"), "--val-cases", "5"]) == 2
    assert "leaves no training case" in capsys.readouterr().err
    assert main(["ablation", "-i", str(data_dir), "-o", str(tmp_path / "x"), "--folds", "2", "--ensemble", "2"]) == 2
    assert "--ensemble needs the hold-out protocol" in capsys.readouterr().err
    assert main(["ablation", "-i", str(data_dir), "-o", str(tmp_path / "x"), "--recipe", "fast"]) == 2
    assert "--recipe: unknown recipe 'fast'" in capsys.readouterr().err
    assert main(["ablation", "-i", str(data_dir), "-o", str(tmp_path / "x"), "--challenge", "BraTS-2099"]) == 2
    assert "--challenge: unknown challenge 'BraTS-2099'" in capsys.readouterr().err


@pytest.mark.parametrize("challenge, regions", [("BraTS-GLI-2023", ["WT", "TC", "ET"]),
                                                ("BraTS-GLI-2025", ["WT", "TC", "ET", "NETC", "SNFH", "RC"])])
def test_the_study_scores_with_a_challenges_rules(data_dir, tmp_path, challenge, regions):
    if challenge.endswith("2025"):
        pytest.importorskip("brats_evaluation", reason="pip install 'omkit[challenge]'")
    out = tmp_path / "study"
    assert main(["ablation", "-i", str(data_dir), "-o", str(out), "--rows", "mc1", "--val-cases", "2",
                 "--challenge", challenge, *TINY]) == 0
    lines = _read_csv(out / "ablation_challenge.csv")
    assert [(r["row"], r["region"]) for r in lines] == [(row, region) for row in ("mc1", "mc1+p") for region in regions]
    assert all(r["challenge"] == challenge and r["cases"] == "2" for r in lines)
    assert {"lesions_tp", "lesions_fn", "lesions_fp"} <= set(lines[0])


def test_paired_differences_say_which_differences_are_beyond_noise():
    from omkit.ablation import paired_differences

    def cases(row, values):
        return [{"row": row, "variant": "post", "region": region, "case": f"c{i}", "dice": v + (0.1 if region == "TC" else 0),
                 "hd95": float("inf") if i == 0 else 5.0}
                for i, v in enumerate(values) for region in ("WT", "TC", "ET")]

    rng = np.random.default_rng(1)
    base = rng.uniform(0.6, 0.8, size=12)
    per_case = cases("a", base + 0.10) + cases("b", base) + cases("c", base + rng.normal(0, 0.05, size=12))
    pairs = {(p["first"], p["second"], p["region"], p["metric"]): p for p in paired_differences(per_case, resamples=2000)}
    ab = pairs[("a", "b", "WT", "dice")]
    assert ab["mean_difference"] == pytest.approx(0.10) and ab["beyond_noise"] and ab["ci_low"] > 0.09
    bc = pairs[("b", "c", "WT", "dice")]
    assert not bc["beyond_noise"] and bc["ci_low"] < 0 < bc["ci_high"]
    assert pairs[("a", "b", "WT", "hd95")]["cases"] == 11  # the case with an infinite HD95 is left out
    assert ("b", "a", "WT", "dice") not in pairs  # each pair once, in the rows' order
