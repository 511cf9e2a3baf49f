"""Reliability, second round: nothing omkit reads runs code (a ``.pt2`` without its
sidecar), plug-in faults are named, settings are checked by what they do, outputs
are complete or absent, one rank's bad case does not take the others down."""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO


class _Evil:
    """Unpickling this runs ``touch <flag>``: a crafted file must never get that far."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", **extra}


def _omkit(*argv, env=None, preexec_fn=None, timeout=300) -> subprocess.CompletedProcess:
    """``python -m omkit ARGV`` in a new process."""
    return subprocess.run([sys.executable, "-m", "omkit", *map(str, argv)], capture_output=True, text=True,
                          env=env or _env(), preexec_fn=preexec_fn, timeout=timeout)


def _cli(*argv) -> subprocess.CompletedProcess:
    """``omkit ARGV`` in this process: its stderr and exit status."""
    import contextlib
    import io

    from omkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main([*map(str, argv)])
        except SystemExit as exc:  # argparse
            code = exc.code
    return subprocess.CompletedProcess(["omkit", *map(str, argv)], code, out.getvalue(), err.getvalue())


def _one_line_error(result, *needles: str, code: int = 2) -> str:
    err = result.stderr.strip()
    assert result.returncode == code and len(err.splitlines()) == 1 and "Traceback" not in err, (result.returncode, err)
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def case_dirs(tmp_path_factory):
    from omkit.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("cases") / "data", num_cases=3, shape=(16, 32, 32), seed=10)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import omkit
    from omkit.checkpoint import save_model

    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(omkit.create_model("omnet_cga", width=0.125), path, patch_size=[8, 16, 16])
    return path


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


class _FaultyPlugin:
    @staticmethod
    def omkit_register_attention(registry):
        registry.add("nan_att", _NaNAttention)
        registry.add("raising_att", _RaisingAttention)
        registry.add("wrong_att", _WrongShapeAttention)


@pytest.fixture
def faulty_plugin():
    import omkit

    omkit.hookimpl(_FaultyPlugin.omkit_register_attention)
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


TINY_TRAIN = ["--width", "0.125", "--patch-size", "8,16,16", "--batch-per-task", "2", "--patches-per-epoch", "4,4,2",
              "--stage-epochs", "1,1,1", "--no-progress", "--device", "cpu", "--threads", "1"]


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
    payload["meta"]["model_kw"] = {"levels": []}
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


# -- 9. temporaries are recognised by omkit's marker, not by their name ---------------------------

def test_a_file_named_like_a_temporary_is_never_removed(tmp_path):
    from omkit.fileio import atomic_write_text, clean_stale_temporaries

    mine = tmp_path / ".x.abcdefgh.tmp.nii.gz"  # a finished output of the case '.x.abcdefgh.tmp'
    mine.write_bytes(b"a user's file")
    assert clean_stale_temporaries(tmp_path) == []
    atomic_write_text(tmp_path / "x", "new")  # cleans its own target's stale temporaries
    assert mine.read_bytes() == b"a user's file"
    long_name = "c" * 240 + ".nii.gz"  # was: its temporary's name was longer than the file system takes
    atomic_write_text(tmp_path / long_name, "long")
    assert (tmp_path / long_name).read_text() == "long"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, "x", long_name])


def test_predict_keeps_the_output_of_a_case_named_like_a_temporary(tmp_path, case_dirs, model_file):
    """Was: the label map of case '.x.abcdefgh.tmp' was removed by the next omkit predict into the folder."""
    import shutil

    case_id = ".x.abcdefgh.tmp"
    case = tmp_path / "data" / "case"
    case.mkdir(parents=True)
    for f in case_dirs[0].iterdir():
        shutil.copy(f, case / f.name.replace(case_dirs[0].name, case_id))
    out = tmp_path / "out"
    argv = ["predict", "-i", case, "-o", out, "-m", model_file, "--device", "cpu", "--no-progress",
            "--tile-size", "8,16,16", "--tile-keep", "8,16,16"]
    assert _cli(*argv).returncode == 0
    written = out / f"{case_id}.nii.gz"
    assert written.is_file()
    assert _cli(*argv, "--skip-existing").returncode == 0
    assert written.is_file()


# -- 8. an ablation's saved scores are typed, not only present ---------------------------------

@pytest.mark.parametrize("bad", [{"dice": "x"}, {"hd95": [1]}, {"case": 3}, {"dice": True}])
def test_wrongly_typed_saved_scores_are_scored_again(tmp_path, bad):
    """Was: "dice": "x" passed read_scores and the study's resume died with a TypeError."""
    from omkit.ablation import read_scores

    case = {"case": "c", "variant": "raw", "region": "WT", "dice": 0.5, "hd95": 3.0, "seconds": 1.0}
    good = {"row": "omnet", "split": "fold0", "title": "OM-Net", "parameters": 10, "cases": [case]}
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(good))
    assert read_scores(path, "omnet", "fold0") == good
    path.write_text(json.dumps({**good, "cases": [{**case, **bad}]}))
    with pytest.warns(UserWarning, match=rf"{re.escape(str(path))}: unreadable saved scores .*scoring the row again"):
        assert read_scores(path, "omnet", "fold0") is None


# -- 7. write failures in train: one line naming the file, never blamed on a case ----------------

def _limited(limit: int):
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_failed_checkpoint_or_cache_write_is_one_line_naming_it(tmp_path, case_dirs):
    """Was: a 34-line traceback for the checkpoint; a full cache blamed on the first case, with a
    --skip-bad-cases hint that would have skipped every case."""
    from omkit.training import TrainConfig, train

    cache = tmp_path / "cache"
    settings = dict(preset="omnet_cga", input=str(case_dirs[0].parent), cache_dir=str(cache), width=0.125,
                    patch_size=(8, 16, 16), batch_per_task=2, patches_per_epoch=(4, 4, 2), stage_epochs=(1, 1, 1),
                    max_steps=1, progress=False)
    train(TrainConfig(**settings, output=str(tmp_path / "first")))  # fills the cache
    run = tmp_path / "run"
    argv = ["train", "-i", case_dirs[0].parent, "-o", run, *TINY_TRAIN, "--max-steps", "2", "--checkpoint-every", "1"]
    result = _omkit(*argv, "--cache-dir", cache, preexec_fn=_limited(1 << 20))  # a checkpoint is about 1.9 MB
    _one_line_error(result, f"{run / 'checkpoints' / 'last.pt'}: cannot write it")
    assert not (run / "model.pt").exists()
    argv[argv.index(run)] = tmp_path / "run2"
    result = _omkit(*argv, "--cache-dir", tmp_path / "cache2", "--skip-bad-cases", preexec_fn=_limited(100_000))
    err = _one_line_error(result, f"{tmp_path / 'cache2'}/", ": cannot write it")
    assert "skip" not in err and "Synth18_000-" in err


# -- --skip-existing keeps only whole label maps; torchrun contains one rank's failure ----------

FAST_TILES = ["--tile-size", "8,16,16", "--tile-keep", "8,16,16", "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("damage", ["truncated", "empty", "wrong_shape"])
def test_skip_existing_predicts_again_over_a_broken_label_map(tmp_path, case_dirs, model_file, damage):
    """Was: a truncated or zero-byte label map was skipped (exit 0) and evaluate failed later."""
    import nibabel as nib

    out = tmp_path / "out"
    argv = ["predict", "-i", case_dirs[0].parent, "-o", out, "-m", model_file, *FAST_TILES]
    assert _cli(*argv).returncode == 0
    target = out / f"{case_dirs[1].name}.nii.gz"
    whole = target.read_bytes()
    if damage == "truncated":
        target.write_bytes(whole[: len(whole) // 2])
    elif damage == "empty":
        target.write_bytes(b"")
    else:
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(target))
    with pytest.warns(UserWarning, match=rf"{re.escape(str(target))}: not a usable label map"):
        result = _cli(*argv, "--skip-existing")
    assert result.returncode == 0 and "wrote 1 case(s)" in result.stdout, result.stderr
    assert nib.load(str(target)).shape == nib.load(str(next(case_dirs[1].glob("*_flair.nii.gz")))).shape
    np.asanyarray(nib.load(str(target)).dataobj)  # whole again


@pytest.mark.skipif(not __import__("torch").distributed.is_available()
                    or not __import__("torch").distributed.is_gloo_available(), reason="no gloo backend")
@pytest.mark.parametrize("skip_bad_cases", [False, True])
def test_torchrun_one_ranks_bad_case_does_not_stop_the_others(tmp_path, model_file, skip_bad_cases):
    """Was: rank 0's bad case killed rank 1 before it wrote anything, and --skip-bad-cases' exit status 1 made
    torchrun print a 40-line traceback."""
    from omkit.data.synthetic import make_dataset

    make_dataset(tmp_path / "data", num_cases=4, shape=(16, 32, 32), seed=40)
    bad = next((tmp_path / "data" / "Synth18_000").glob("*_flair.nii.gz"))  # rank 0's first case
    bad.write_bytes(b"garbage")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "omkit",
               "predict", "-i", str(tmp_path / "data"), "-o", str(out), "-m", str(model_file), *FAST_TILES]
    result = subprocess.run(command + (["--skip-bad-cases"] if skip_bad_cases else []), capture_output=True,
                            text=True, timeout=300, env=_env())
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"omkit predict: failed: {bad}: unreadable NIfTI file" in result.stderr
    assert "1 of 4 case(s) failed" in result.stderr
    written = sorted(p.name for p in out.iterdir())
    # rank 1's cases (1 and 3) are written whatever rank 0 met; rank 0 goes on only with --skip-bad-cases
    assert {"Synth18_001.nii.gz", "Synth18_003.nii.gz"} <= set(written)
    assert ("Synth18_002.nii.gz" in written) == skip_bad_cases


# -- weak spots: own input under --force, megabyte messages, float32 range, cache metadata --------

def test_force_never_deletes_the_runs_own_input(tmp_path, case_dirs):
    """Was: train -i RUN/data -o RUN --force deleted its own input."""
    import shutil

    from omkit.training import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(preset="omnet_cga", input=str(case_dirs[0].parent), output=str(run),
                      cache_dir=str(tmp_path / "cache"), width=0.125, patch_size=(8, 16, 16), batch_per_task=2,
                      patches_per_epoch=(4, 4, 2), stage_epochs=(1, 1, 1), max_steps=1, progress=False))
    shutil.copytree(case_dirs[0].parent, run / "data")
    result = _cli("train", "-i", run / "data", "-o", run, "--force", *TINY_TRAIN, "--max-steps", "1",
                  "--cache-dir", tmp_path / "cache")
    _one_line_error(result, f"--input {run / 'data'} is inside the run folder {run}, which --force would delete")
    assert sorted(p.name for p in (run / "data").iterdir()) == sorted(c.name for c in case_dirs)


def test_an_error_quoting_a_huge_value_stays_short(tmp_path, case_dirs):
    """Was: error lines echoing 100-200 KB values."""
    huge = "9" * 200_000
    for argv in (["--model-options", f"x='{huge}'"], ["--samplers", f"brain,dilated_tumor(radius='{huge}'),core"],
                 ["--lr", f"x{huge}"]):
        result = _cli("train", "-i", case_dirs[0].parent, "-o", tmp_path / "run", *TINY_TRAIN, *argv)
        err = _one_line_error(result)
        assert len(err) < 1200 and "characters left out" in err, err[:300]


def test_intensities_beyond_float32_are_named_as_such(tmp_path, case_dirs):
    """Was: finite float64 intensities that overflow float32 were reported as "non-finite"."""
    import shutil

    import nibabel as nib

    from omkit.data import CaseError, load_case

    case = tmp_path / case_dirs[0].name
    shutil.copytree(case_dirs[0], case)
    t2 = next(case.glob("*_t2.nii.gz"))
    img = nib.load(str(t2))
    data = np.asanyarray(img.dataobj).astype(np.float64)
    data[data > 0] = 1e300
    nib.save(nib.Nifti1Image(data, img.affine), str(t2))
    with pytest.raises(CaseError, match=rf"^{re.escape(str(t2))}: intensities up to 1e\+300 are beyond float32"):
        load_case(case)


def test_a_cache_entry_with_nan_spacing_is_rebuilt(tmp_path, case_dirs):
    """Was: a cache meta.json with NaN spacing was accepted."""
    from omkit.data import PreprocessedCache

    cache = PreprocessedCache(tmp_path / "cache")
    spacing = cache.load(case_dirs[0]).spacing
    meta_path = cache.entry_dir(case_dirs[0]) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "spacing": [float("nan"), 1.0, 1.0]}))
    with pytest.warns(UserWarning, match=r"corrupt cache entry .*meta\.json.*rebuilding"):
        assert PreprocessedCache(tmp_path / "cache").load(case_dirs[0]).spacing == spacing
