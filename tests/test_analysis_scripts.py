"""The measurement helpers of the analysis scripts under scripts/ (loaded by path)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_edge_exposure_patch_shares_match_counting():
    edge = _script("edge_exposure")
    rng = np.random.default_rng(0)
    masks = [rng.random((9, 11, 13)) < p for p in (0.3, 0.6, 0.1)]
    size = (4, 6, 5)
    centres = np.array([[0, 0, 0], [4, 5, 6], [8, 10, 12], [2, 9, 1]])
    shares = edge.patch_shares(centres, *masks, size)
    for row, centre in zip(shares, centres):
        lo = centre - np.array(size) // 2
        box = tuple(slice(max(a, 0), max(a + s, 0)) for a, s in zip(lo, size))
        expected = [m[box].sum() / np.prod(size) for m in masks]  # voxels outside the volume count as none
        np.testing.assert_allclose(row, expected)


def test_depth_below_surface_counts_the_array_edge_as_outside():
    from omkit.morphology import depth_below_surface

    brain = np.ones((5, 5, 5), dtype=bool)
    depth = depth_below_surface(brain)
    assert depth[0, 2, 2] == 1 and depth[2, 2, 2] == 3
    brain[2, 2, 0] = False
    depth = depth_below_surface(brain)
    assert depth[2, 2, 1] == 1 and depth[2, 2, 0] == 0
    padded = np.pad(brain, 3)  # the same mask inside a larger volume: the same depths
    np.testing.assert_array_equal(depth_below_surface(padded)[3:-3, 3:-3, 3:-3], depth)


def test_false_components_are_those_touching_no_truth():
    report = _script("false_tumor_report")
    pred = np.zeros((6, 6, 6), dtype=np.uint8)
    gt = np.zeros_like(pred)
    pred[0:2, 0:2, 0:2] = 2  # touches the truth
    gt[1, 1, 1] = 1
    pred[4:6, 4:6, 4:6] = 2  # touches none
    labels, false = report.false_components(pred, gt)
    assert len(false) == 1 and (labels == false[0]).sum() == 8
    assert labels[5, 5, 5] == false[0]


@pytest.mark.parametrize("name", ["task_veto_report", "edge_exposure", "false_tumor_report"])
def test_scripts_print_their_usage(name, capsys):
    with pytest.raises(SystemExit) as info:
        _script(name).main(["--help"])
    assert info.value.code == 0 and "usage" in capsys.readouterr().out


def test_compare_studies_pairs_cases_across_study_folders(tmp_path, capsys):
    import json

    compare = _script("compare_studies")
    for study, shift, splits in (("a", 0.1, (0, 1)), ("b", 0.0, (0, 1, 2))):
        for split in splits:  # study a stopped after two splits: the comparison uses the cases both have
            cases = [{"case": f"case{split}{k}", "variant": "post", "region": region,
                      "dice": 0.5 + 0.05 * k + shift, "hd95": 10.0 - k}
                     for k in range(3) for region in ("WT", "TC", "ET")]
            folder = tmp_path / study / "runs" / "omnet_cga" / f"fold{split}"
            folder.mkdir(parents=True)
            (folder / "scores.json").write_text(json.dumps({"row": "omnet_cga", "split": f"fold{split}", "title": "OM-Net + CGA",
                                                            "parameters": 1, "held_out": [], "cases": cases}))
    compare.main([f"{tmp_path / 'a'}:omnet_cga=with", f"{tmp_path / 'b'}:omnet_cga=without", "--metrics", "dice,hd95"])
    out = capsys.readouterr().out
    assert "with minus without, post maps (6 cases both scored)" in out
    assert "| dice | WT | 0.650 | 0.550 | **+0.100 [+0.100, +0.100]** |" in out
    assert "| hd95 | WT | 9.000 | 9.000 | +0.000 [+0.000, +0.000] |" in out
    with pytest.raises(SystemExit, match="no row 'mc3'"):
        compare.main([f"{tmp_path / 'a'}:mc3", f"{tmp_path / 'b'}:omnet_cga"])
