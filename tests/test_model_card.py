"""The model card (``omkit.model_card``): written at training time, read back by
everything that loads a model, its recommendations the defaults an explicit argument
overrides, and model files written before cards read into one."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch

import omkit
from omkit.checkpoint import FORMAT, ModelFileError, load_model, read_card_of, save_model
from omkit.inference import SegmentationPredictor, TileSettings
from omkit.model_card import CardError, ModelCard

from conftest import TINY_WIDTH


def write_model(path, **card_fields):
    torch.manual_seed(0)
    model = omkit.create_model("omnet_cga", width=TINY_WIDTH)
    return save_model(model, path, **card_fields), model


def test_the_card_round_trips_and_rides_on_the_loaded_model(tmp_path):
    path, _ = write_model(tmp_path / "model.pt", label_convention="2023", patch_size=(8, 16, 16),
                          training={"steps": 3})
    model, card = load_model(path)
    assert model.card is card and card == read_card_of(path)
    assert (card.preset, card.width, card.label_convention, card.patch_size) == ("omnet_cga", TINY_WIDTH, "2023",
                                                                                 (8, 16, 16))
    assert card.input_features == "mri" and card.training == {"steps": 3}
    # a new patch size carries the recommended tiles with it unless they are given
    assert card.inference == {"mode": "auto", "tile_size": [8, 16, 16], "tile_keep": [4, 12, 12]}
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card


def test_the_recommended_tiles_are_what_predict_uses_unless_a_flag_says_otherwise(tmp_path):
    recommended = {"mode": "auto", "tile_size": [16, 32, 32], "tile_keep": [8, 16, 16]}
    path, _ = write_model(tmp_path / "a.pt", inference=recommended)
    predictor = SegmentationPredictor.from_files([path])
    assert predictor.inference == "tiles"  # trained on patches: auto runs the card's tiles
    assert (tuple(predictor.tiles.size), tuple(predictor.tiles.keep)) == ((16, 32, 32), (8, 16, 16))
    other, _ = write_model(tmp_path / "b.pt", inference={**recommended, "tile_keep": [4, 16, 16]})
    assert tuple(SegmentationPredictor.from_files([other]).tiles.keep) == (4, 16, 16)
    explicit = SegmentationPredictor.from_files([path], tiles=TileSettings(size=(16, 32, 32), keep=(8, 24, 24)))
    assert tuple(explicit.tiles.keep) == (8, 24, 24)
    size_only = SegmentationPredictor.from_files([path], tiles=TileSettings(size=(32, 32, 32)))
    assert tuple(size_only.tiles.size) == (32, 32, 32) and tuple(size_only.tiles.keep) == (16, 16, 16)


def test_the_command_line_follows_the_card_and_its_flags_win(tmp_path, capsys):
    from omkit.cli import main
    from omkit.data.synthetic import make_dataset

    make_dataset(tmp_path / "data", num_cases=1, shape=(16, 40, 40))
    path, _ = write_model(tmp_path / "m.pt", inference={"mode": "auto", "tile_size": [16, 32, 32],
                                                        "tile_keep": [8, 16, 16]})

    def note(name, *flags):
        capsys.readouterr()
        assert main(["predict", "--no-progress", "-m", str(path), "-i", str(tmp_path / "data"),
                     "-o", str(tmp_path / name), "--device", "cpu", *flags]) == 0
        return next(line for line in capsys.readouterr().out.splitlines() if "tile inference (auto)" in line)

    assert "tiles 16 x 32 x 32 keeping 8 x 16 x 16" in note("card")
    assert "tiles 16 x 32 x 32 keeping 8 x 8 x 8" in note("flag", "--tile-keep", "8,8,8")


def test_the_card_names_the_input_features_and_the_label_convention(tmp_path):
    torch.manual_seed(0)
    model = omkit.create_model("omnet_cga", width=TINY_WIDTH, in_channels=8)
    path = save_model(model, tmp_path / "asym.pt", input_features="mri+asymmetry", label_convention="2024")
    segmenter = omkit.Segmenter.from_files(path, device="cpu")
    assert segmenter.predictor.input_features == "mri+asymmetry" and segmenter.label_convention == "2024"
    with pytest.raises(CardError, match="input_features"):
        ModelCard.of_model(model, input_features="no-such-set")


def test_a_model_file_from_before_cards_still_loads(tmp_path):
    """Format 1: the fields at the top level, the input features in the preprocessing record."""
    torch.manual_seed(0)
    model = omkit.create_model("omnet_cga", width=TINY_WIDTH, attention="se")
    meta = {"format": FORMAT, "format_version": 1, "preset": "omnet_cga", "width": TINY_WIDTH,
            "model_kw": {"attention": "se"}, "label_convention": "2023",
            "preprocessing": {"normalization": "zscore-nonzero", "crop": "brain-bbox", "input_features": "mri"},
            "patch_size": [16, 32, 32], "train_mode": "windows",
            "train_windows": {"window": [16, 32, 32], "block": [8, 24, 24]}, "training": {"steps": 7}}
    path = tmp_path / "old.pt"
    torch.save({"meta": meta, "state_dict": model.state_dict()}, path)
    loaded, card = load_model(path)
    assert card.model_options == {"attention": "se"} and card.label_convention == "2023"
    assert card.input_features == "mri" and "input_features" not in card.preprocessing
    assert card.train_mode == "windows" and card.tiles_for("dense") == ((16, 32, 32), (8, 24, 24))
    assert card.tiles_for("auto") == ((16, 32, 32), (8, 24, 24)) and card.tiles_for("tiles")[1] == (5, 20, 20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert card["model_kw"] == {"attention": "se"} and card.get("patch_size") == [16, 32, 32]
    assert all(issubclass(w.category, DeprecationWarning) for w in caught) and len(caught) == 2
    out = subprocess.run([sys.executable, "-m", "omkit", "models", "--card", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "omnet_cga (width 0.125)" in out.stdout and "attention='se'" in out.stdout
    assert "windows 16 x 32 x 32, blocks 8 x 24 x 24" in out.stdout


def test_a_card_from_a_newer_omkit_is_refused_in_one_line(tmp_path):
    path, _ = write_model(tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    payload["meta"]["card"]["calibration"] = {"t": 1.5}
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match=r"model.pt: malformed model metadata: unknown field 'calibration'"):
        load_model(path)
    out = subprocess.run([sys.executable, "-m", "omkit", "models", "--card", str(path)], capture_output=True, text=True)
    assert out.returncode != 0 and "unknown field 'calibration'" in out.stderr and "Traceback" not in out.stderr
