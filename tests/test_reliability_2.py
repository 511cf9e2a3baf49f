"""Reliability, second round (1-6): nothing omkit reads runs code (a ``.pt2`` without
its sidecar), plug-in faults are named, settings are checked by what they do, and
evaluate refuses what it cannot score honestly and writes its outputs as one set.
The rest of the round is in test_reliability_3.py."""
from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from reliability_support import (TINY_TRAIN, Evil as _Evil, case_dirs, cli as _cli, omkit_env as _env,  # noqa: F401
                                 model_file, one_line_error as _one_line_error, run_omkit as _omkit)
from conftest import REPO


# -- 1. a .pt2 without its sidecar: read with zipfile, never unpickled --------------------------

def test_a_pt2_without_its_sidecar_is_read_without_unpickling(tmp_path):
    """Was: read_metadata fell back to torch.export.load, which unpickled a legacy weights member."""
    from omkit.export import read_metadata

    flag = tmp_path / "ran"
    crafted = tmp_path / "crafted.pt2"
    with zipfile.ZipFile(crafted, "w") as archive:
        archive.writestr("crafted/data/weights/model.pt", pickle.dumps(_Evil(flag)))
        archive.writestr("crafted/archive_format", "pt2")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(crafted))}: no omkit metadata"):
        read_metadata(crafted)
    with zipfile.ZipFile(crafted, "a") as archive:
        archive.writestr("crafted/extra/omkit.json", json.dumps({"format": "omkit-export", "preset": "omnet"}))
    assert read_metadata(crafted)["preset"] == "omnet"
    assert not flag.exists()
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"junk\.pt2: not a readable \.pt2 archive"):
        read_metadata(tmp_path / "junk.pt2")


# -- 4. plug-ins: import-time exits, NaN / wrong shape / exceptions at the first call -----------

def test_a_plugin_exiting_at_import_is_named_with_how_to_block_it(tmp_path):
    """Was: a plug-in calling sys.exit(3) at import made omkit models exit 3, silently."""
    site = tmp_path / "site"
    (site / "omkit_exit3-0.1.dist-info").mkdir(parents=True)
    (site / "omkit_exit3.py").write_text("import sys\nsys.exit(3)\n")
    (site / "omkit_exit3-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: omkit-exit3\nVersion: 0.1\n")
    (site / "omkit_exit3-0.1.dist-info" / "entry_points.txt").write_text("[omkit]\nexit3 = omkit_exit3\n")
    env = _env(PYTHONPATH=f"{site}{os.pathsep}{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    result = _omkit("models", env=env)
    _one_line_error(result, "plug-in 'exit3'", "failed to import: SystemExit: 3", "OMKIT_BLOCK_PLUGINS=exit3")
    assert _omkit("models", env={**env, "OMKIT_BLOCK_PLUGINS": "exit3"}).returncode == 0


class _NaNAttention(__import__("torch").nn.Module):
    def __init__(self, channels, **kw):
        super().__init__()

    def forward(self, x):
        return x * float("nan")


class _RaisingAttention(_NaNAttention):
    def forward(self, x):
        raise RuntimeError("boom inside the plug-in")


class _WrongShapeAttention(_NaNAttention):
    def forward(self, x):
        return x[:, :1]


class _NaNBackbone(__import__("torch").nn.Module):
    out_channels = 8

    def __init__(self, in_channels=4, width=1.0, **kw):
        super().__init__()

    def forward(self, x):
        return x.new_full((x.shape[0], self.out_channels, *x.shape[2:]), float("nan"))


class _FaultyPlugin:
    @staticmethod
    def omkit_register_attention(registry):
        registry.add("nan_att", _NaNAttention)
        registry.add("raising_att", _RaisingAttention)
        registry.add("wrong_att", _WrongShapeAttention)

    @staticmethod
    def omkit_register_backbones(registry):
        registry.add("nan_backbone", _NaNBackbone)


@pytest.fixture
def faulty_plugin():
    import omkit

    omkit.hookimpl(_FaultyPlugin.omkit_register_attention)
    omkit.hookimpl(_FaultyPlugin.omkit_register_backbones)
    omkit.setup_plugins(extra_plugins={"faulty": _FaultyPlugin})
    yield
    omkit.setup_plugins()


FAULTS = {"nan_att": "returned non-finite values", "raising_att": "raised RuntimeError: boom inside the plug-in",
          "wrong_att": "returned shape"}


@pytest.mark.parametrize("attention", sorted(FAULTS))
def test_a_faulty_attention_plugin_is_named_in_predict_and_the_python_api(tmp_path, case_dirs, faulty_plugin,
                                                                          attention):
    """Was: NaN gave all-background label maps and exit 0; an exception or a wrong shape a long traceback."""
    import torch

    import omkit
    from omkit.checkpoint import save_model
    from omkit.registry import PluginError

    model = tmp_path / "model.pt"
    save_model(omkit.create_model("omnet", width=0.125, attention=attention), model, patch_size=[8, 16, 16])
    out = tmp_path / "out"
    result = _cli("predict", "-i", case_dirs[0].parent, "-o", out, "-m", model, "--no-progress", "--device", "cpu",
                  "--tile-size", "8,16,16", "--tile-keep", "8,16,16", "--skip-bad-cases", "--inference", "tiles")
    err = _one_line_error(result, f"attention {attention!r} of plug-in 'faulty'", FAULTS[attention],
                          "OMKIT_BLOCK_PLUGINS=faulty")
    assert not out.exists() or not list(out.iterdir()), err
    segmenter = omkit.Segmenter.from_files([model], device="cpu")
    with pytest.raises(PluginError, match=re.escape(FAULTS[attention])):
        segmenter(torch.rand(4, 32, 32, 16) + 1)


@pytest.mark.parametrize("attention", sorted(FAULTS))
def test_a_faulty_attention_plugin_is_named_in_training(tmp_path, case_dirs, faulty_plugin, attention):
    result = _cli("train", "-i", case_dirs[0].parent, "-o", tmp_path / "run", "--preset", "omnet", "--attention",
                  attention, *TINY_TRAIN, "--max-steps", "1", "--cache-dir", tmp_path / "cache")
    _one_line_error(result, f"attention {attention!r} of plug-in 'faulty'", FAULTS[attention])
    assert not (tmp_path / "run").exists()  # failed at the first step: nothing written


def test_a_backbone_plugin_returning_nan_is_named(faulty_plugin):
    import torch

    import omkit
    from omkit.registry import PluginError

    model = omkit.create_model("omnet", width=0.125, backbone="nan_backbone")
    with pytest.raises(PluginError, match=r"^backbone 'nan_backbone' of plug-in 'faulty' .*returned non-finite"):
        model(torch.rand(1, 4, 8, 16, 16))


def test_the_plugin_output_check_is_one_reusable_function():
    import torch

    from omkit.models.plugin_checks import check_plugin_output
    from omkit.registry import PluginError

    check_plugin_output(torch.zeros(2, 3), (2, 3), "attention 'x'")
    for output, why in ((torch.zeros(2, 4), "returned shape"), (torch.full((2, 3), float("inf")), "returned non-finite"),
                        ([1], "returned list, not a tensor")):
        with pytest.raises(PluginError, match=rf"^attention 'x' {why}"):
            check_plugin_output(output, (2, 3), "attention 'x'")
    check_plugin_output(torch.full((2, 3), float("nan")), (2, 3), "attention 'x'", inputs_finite=False)


# -- 2, 3, 10. settings checked by what they do -------------------------------------------------

@pytest.mark.parametrize("preset, option, needle", [
    ("omnet", "levels=()", "--model-options levels=(): cannot build 'omnet' with it (IndexError"),
    ("omnet_se", "attention_kw={'reduction':0}", "--model-options attention_kw={'reduction': 0}: cannot build "
                                                 "'omnet_se' with it (ZeroDivisionError"),
])
def test_model_options_that_break_construction_are_one_line(tmp_path, case_dirs, preset, option, needle):
    """Was: IndexError / ZeroDivisionError tracebacks of 38-45 lines, exit 1."""
    result = _cli("train", "-i", case_dirs[0].parent, "-o", tmp_path / "run", "--preset", preset, *TINY_TRAIN,
                  "--max-steps", "1", "--cache-dir", tmp_path / "cache", "--model-options", option)
    _one_line_error(result, needle)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # checked before anything started


def test_model_options_in_a_model_file_or_a_resumed_config_are_one_line(tmp_path, case_dirs, model_file):
    import torch

    from omkit.training import TrainConfig, train

    payload = torch.load(model_file, weights_only=True)
    payload["meta"]["card"]["model_options"] = {"levels": []}
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    for argv in (["predict", "-i", case_dirs[0].parent, "-o", tmp_path / "out", "-m", bad, "--device", "cpu"],
                 ["export", "-m", bad, "-o", tmp_path / "bad.pt2"]):
        _one_line_error(_cli(*argv), f"{bad}: cannot build preset 'omnet_cga' (IndexError")
    run = tmp_path / "run"
    settings = dict(preset="omnet_cga", input=str(case_dirs[0].parent), output=str(run), cache_dir=str(tmp_path / "c"),
                    width=0.125, patch_size=(8, 16, 16), batch_per_task=2, patches_per_epoch=(4, 4, 2),
                    stage_epochs=(1, 1, 1), max_steps=1, progress=False)
    train(TrainConfig(**settings))
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["model_options"] = {"levels": []}
    (run / "config.json").write_text(json.dumps(saved))
    _one_line_error(_cli("train", "-i", case_dirs[0].parent, "-o", run, "--resume", "--no-progress"),
                    "--model-options levels=[]: cannot build 'omnet_cga'")


@pytest.mark.parametrize("argv, needle", [
    (["--lr", "1e300", "--optimizer", "sgd"], "--lr: must be at most 1e+30"),
    (["--weight-decay", "1e300"], "--weight-decay: must be in [0, 1e+30]"),
    (["--samplers", "brain,tumor_mimic(margin=1e999),core"], "margin must be a number in [0, 1000], got inf"),
    (["--samplers", "brain,dilated_tumor(radius=1e300),core"], "radius must be a number in [0, 1000]"),
])
def test_settings_that_would_overflow_what_they_feed_are_refused(tmp_path, case_dirs, argv, needle):
    """Was: --lr 1e300 failed inside the first SGD step (39 lines); margin=1e999 was blamed on the case."""
    result = _cli("train", "-i", case_dirs[0].parent, "-o", tmp_path / "run", *TINY_TRAIN, "--max-steps", "1",
                  "--cache-dir", tmp_path / "cache", *argv)
    _one_line_error(result, needle)


def test_models_params_width_has_the_training_limit():
    """Was: omkit models --params --width 1e6 tried to allocate 1e17 bytes (a traceback)."""
    _one_line_error(_cli("models", "--params", "--width", "1e6"), "--width must be width <= 4")
    _one_line_error(_cli("models", "--params", "--width", "0"), "--width must be > 0")


# -- 5, 6. evaluate: NaN headers, one set of outputs or none ------------------------------------

def _label_folders(root: Path, case_dirs) -> tuple[Path, Path]:
    """Predictions (the ground truth itself, uncompressed) and a folder of ground-truth label maps."""
    import nibabel as nib

    preds, gt = root / "preds", root / "gt"
    preds.mkdir()
    gt.mkdir()
    for case in case_dirs:
        seg = nib.load(str(next(case.glob("*_seg.nii.gz"))))
        data = np.asanyarray(seg.dataobj)
        nib.save(nib.Nifti1Image(data, seg.affine), str(preds / f"{case.name}.nii"))
        nib.save(nib.Nifti1Image(data, seg.affine), str(gt / f"{case.name}.nii"))
    return preds, gt


def _patch_header(path: Path, field: str, index: int, value) -> None:
    from nibabel.nifti1 import header_dtype

    raw = path.read_bytes()
    header = np.frombuffer(bytearray(raw[:348]), dtype=header_dtype).copy()
    if np.ndim(header[field][0]):
        header[field][0][index] = value
    else:
        header[field][0] = value
    path.write_bytes(header.tobytes() + raw[348:])


@pytest.mark.parametrize("damage, needle", [
    ("nan_affine", "the header's affine is not finite"),
    ("nan_gt_spacing", "voxel sizes (nan,"),
    ("huge_header", "header claims (1200, 1200, 1200)"),
    ("two_files", "has two label maps here"),
])
def test_evaluate_refuses_what_it_cannot_score_honestly(tmp_path, case_dirs, damage, needle):
    """Was: a NaN affine scored Dice 1 ('same space': NaN comparisons are False); a NaN voxel size wrote NaN
    tokens into summary.json; a 512-byte .nii.gz claiming 1200^3 voxels was read into 1.9 GB; one of C1.nii and
    C1.nii.gz was scored silently."""
    import shutil

    preds, gt = _label_folders(tmp_path, case_dirs)
    name = f"{case_dirs[0].name}.nii"
    target = preds / name
    if damage == "nan_affine":
        _patch_header(target, "qform_code", 0, 0)
        _patch_header(target, "srow_x", 0, np.nan)
    elif damage == "nan_gt_spacing":
        target = gt / name
        _patch_header(target, "pixdim", 1, np.nan)
    elif damage == "huge_header":
        for axis in (1, 2, 3):
            _patch_header(target, "dim", axis, 1200)
    else:
        shutil.copy(target, preds / f"{name}.gz")
    result = _cli("evaluate", "-i", preds, "--gt", gt, "-o", tmp_path / "eval")
    err = _one_line_error(result, needle)
    assert str(target) in err or damage == "two_files"
    assert not (tmp_path / "eval").exists() or not list((tmp_path / "eval").iterdir())


def test_evaluate_writes_both_outputs_or_neither(tmp_path, case_dirs):
    """Was: under a file-size limit metrics.csv was written, summary.json not, the error named no file, and the
    rerun was refused because metrics.csv existed."""
    import resource

    preds, gt = _label_folders(tmp_path, case_dirs)
    out = tmp_path / "eval"
    limited = _omkit("evaluate", "-i", preds, "--gt", gt, "-o", out,
                     preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024)))
    err = _one_line_error(limited, ": cannot write it (File too large)")
    assert f"error: {out / 'metrics.csv'}:" in err or f"error: {out / 'summary.json'}:" in err, err
    assert not out.exists() or list(out.iterdir()) == []  # neither, and no temporary left
    again = _cli("evaluate", "-i", preds, "--gt", gt, "-o", out)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "summary.json"]
    json.loads((out / "summary.json").read_text())
