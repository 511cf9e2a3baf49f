"""Reliability, second round (7-9 and the weak spots): write failures named, saved
scores typed, temporaries known by omkit's marker, --skip-existing keeps only whole
label maps, torchrun contains one process's failure, and the smaller edges."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from reliability_support import (FAST_TILES, TINY_TRAIN, case_dirs, cli as _cli, omkit_env as _env,  # noqa: F401
                                 limited_file_size as _limited, model_file, one_line_error as _one_line_error,
                                 run_omkit as _omkit)


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
@pytest.mark.parametrize("shard", ["queue", "round-robin"])
def test_torchrun_one_ranks_bad_case_does_not_stop_the_others(tmp_path, model_file, skip_bad_cases, shard):
    """Was: rank 0's bad case killed rank 1 before it wrote anything, and --skip-bad-cases' exit status 1 made
    torchrun print a 40-line traceback."""
    from omkit.data.synthetic import make_dataset

    make_dataset(tmp_path / "data", num_cases=4, shape=(16, 32, 32), seed=40)
    bad = next((tmp_path / "data" / "Synth18_000").glob("*_flair.nii.gz"))  # rank 0's first case (round-robin)
    bad.write_bytes(b"garbage")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "omkit",
               "predict", "-i", str(tmp_path / "data"), "-o", str(out), "-m", str(model_file), *FAST_TILES,
               "--shard", shard]
    result = subprocess.run(command + (["--skip-bad-cases"] if skip_bad_cases else []), capture_output=True,
                            text=True, timeout=300, env=_env())
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"omkit predict: failed: {bad}: unreadable NIfTI file" in result.stderr
    assert "1 of 4 case(s) failed" in result.stderr
    written = sorted(p.name for p in out.iterdir())
    if shard == "queue":
        # the process that met the bad case stops (goes on with --skip-bad-cases); the others take every other
        # case, the one it had read ahead included
        assert written == ["Synth18_001.nii.gz", "Synth18_002.nii.gz", "Synth18_003.nii.gz"]
    else:
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
