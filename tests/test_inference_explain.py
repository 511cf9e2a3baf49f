"""``omkit explain``: the Fig. 6 style channel-importance figure."""
from __future__ import annotations

import pytest

import omkit
from omkit.checkpoint import save_model
from omkit.cli import main
from omkit.data.synthetic import make_case, write_case


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    case = write_case(make_case((16, 40, 40), seed=3, case_id="Synth18_777"), root)
    save_model(omkit.create_model("omnet_cga", width=0.125), root / "cga.pt")
    save_model(omkit.create_model("omnet", width=0.125), root / "plain.pt")
    return root, case


@pytest.mark.parametrize("task", ["2", "3"])
def test_writes_a_png(files, task, tmp_path):
    root, case = files
    target = tmp_path / "fig6.png"
    assert main(["explain", "-m", str(root / "cga.pt"), "-i", str(case), "-o", str(target), "--task", task,
                 "--tile-size", "8,16,16", "--tile-keep", "8,16,16"]) == 0
    assert target.read_bytes()[:4] == b"\x89PNG"


def test_slice_features_match_a_whole_slice_pass(files):
    """With one tile as large as the volume, starting at slice 0 (kept centres
    start at the requested slice), the stitched maps are the network's own."""
    import torch

    from omkit.checkpoint import load_model
    from omkit.cli.explain import slice_maps
    from omkit.data import load_case, preprocess_case
    from omkit.inference import TileSettings

    root, case = files
    model, _ = load_model(root / "cga.pt")
    pre = preprocess_case(load_case(case))
    d, h, w = pre.image.shape[1:]
    size = tuple(-(-n // 8) * 8 for n in (d, h, w))  # a single tile covering everything
    tiles = TileSettings(size=size, keep=size, batch=1)
    features, guidance = slice_maps(model, pre.image, 0, 2, tiles, "cpu")
    padded = torch.zeros(1, 4, *size)
    padded[0, :, :d, :h, :w] = torch.from_numpy(pre.image)
    with torch.no_grad():
        full = model.backbone(padded)
        expected_guidance = model.cross_task_guidance(1, full)
    assert torch.allclose(torch.from_numpy(features), full[0, :, 0, :h, :w], atol=1e-5)
    assert torch.allclose(torch.from_numpy(guidance), expected_guidance[0, 0, 0, :h, :w], atol=1e-5)


def test_needs_a_guided_head_and_a_slice_in_the_brain(files, tmp_path, capsys):
    root, case = files
    assert main(["explain", "-m", str(root / "plain.pt"), "-i", str(case), "-o", str(tmp_path / "a.png")]) == 2
    assert "plain.pt" in capsys.readouterr().err
    assert main(["explain", "-m", str(root / "cga.pt"), "-i", str(case), "-o", str(tmp_path / "b.png"), "--slice", "999"]) == 2
    assert "--slice" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
