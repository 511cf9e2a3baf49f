"""Reliability and safety of everything omkit reads and writes: files are
loaded without running code, temporaries stranded by a kill are cleaned,
corrupt cache entries are rebuilt, run folders are locked and replaced only
when omkit made them, bad cases and bad numbers are one-line errors."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from omkit.fileio import atomic_path, atomic_write_text, clean_stale_temporaries, is_temporary

from conftest import REPO


def _python(code: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, **kw)


def _hidden(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*")) if folder.exists() else []


# -- temporaries: a killed writer's are removed, a live writer's are not -----------------------

def test_a_killed_writers_temporary_is_cleaned_a_live_ones_is_not(tmp_path):
    target = tmp_path / "out" / "case.nii.gz"
    killed = _python(f"""
        import os, signal
        from omkit.fileio import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            tmp.write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    (stranded,) = target.parent.iterdir()
    assert is_temporary(stranded.name, target.name) and stranded.name.endswith(".tmp.nii.gz")

    live = _python(f"""
        import sys, time
        from omkit.fileio import atomic_path
        with atomic_path({str(tmp_path / "out" / "other.png")!r}) as tmp:
            tmp.write_bytes(b"still writing")
            print("writing", flush=True)
            time.sleep(60)
    """, stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "writing"
        assert clean_stale_temporaries(target.parent) == [stranded]
        (writing,) = target.parent.iterdir()
        assert is_temporary(writing.name, "other.png")  # its writer holds the lock: kept
    finally:
        live.kill()
        live.communicate()
    assert len(clean_stale_temporaries(target.parent)) == 1  # now it is stranded too
    atomic_write_text(target.parent / "a.txt", "x")
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_an_atomic_write_removes_the_stale_temporaries_of_its_target(tmp_path):
    from omkit.fileio import MARKER

    stale = tmp_path / ".last.pt.abcd1234.tmp.pt"  # as left by a killed writer
    stale.write_bytes(b"x")
    other = tmp_path / ".model.pt.abcd1234.tmp.pt"
    other.write_bytes(b"x")
    for path in (stale, other):
        os.setxattr(path, MARKER, b"1")  # what omkit's writer puts on its temporaries
    with atomic_path(tmp_path / "last.pt") as tmp:
        tmp.write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.pt.abcd1234.tmp.pt", "last.pt"]
    assert not is_temporary("notes.txt") and not is_temporary(".hidden")


# -- the preprocessed-case cache: checked on every read, rebuilt when corrupt, never runs code ---

class _Evil:
    """Unpickling this runs ``touch <flag>``: a crafted file must never get that far."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


@pytest.fixture(scope="module")
def case_dirs(tmp_path_factory):
    from omkit.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("cases") / "data", num_cases=3, shape=(16, 32, 32), seed=10)


def _cached(tmp_path, case_dir):
    from omkit.data import PreprocessedCache

    cache = PreprocessedCache(tmp_path / "cache")
    first = cache.load(case_dir)
    return cache, cache.entry_dir(case_dir), np.array(first.image)


def _flip_byte(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "flip", "pickle", "meta", "header_class", "missing"])
def test_a_corrupt_cache_entry_is_named_and_rebuilt(tmp_path, case_dirs, damage):
    from omkit.data import PreprocessedCache

    cache, entry, image = _cached(tmp_path, case_dirs[0])
    flag = tmp_path / "ran"
    target = entry / "image.npy"
    if damage == "truncate":  # was: "mmap length is greater than file size", no file named, every run
        target.write_bytes(target.read_bytes()[:1000])
    elif damage == "flip":  # the size is right; only the checksum can tell
        _flip_byte(target)
    elif damage == "pickle":
        np.save(target, np.array([_Evil(flag)], dtype=object), allow_pickle=True)
    elif damage == "meta":
        target = entry / "meta.json"
        target.write_text("{not json")
    elif damage == "header_class":  # was: any attribute of nibabel called with the header bytes
        target = entry / "meta.json"
        meta = json.loads(target.read_text())
        target.write_text(json.dumps({**meta, "header_class": "load"}))
    elif damage == "missing":
        (entry / "brain_mask.npy").unlink()
        target = entry / "brain_mask.npy"
    with pytest.warns(UserWarning, match=rf"corrupt cache entry .*{re.escape(target.name)}.*rebuilding"):
        again = PreprocessedCache(tmp_path / "cache").load(case_dirs[0])
    np.testing.assert_array_equal(again.image, image)
    assert not flag.exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [entry.name]  # rebuilt in place, no leftovers
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PreprocessedCache(tmp_path / "cache").load(case_dirs[0])  # healthy again


def test_a_corrupt_derived_array_is_computed_again(tmp_path, case_dirs):
    cache, entry, _ = _cached(tmp_path, case_dirs[0])
    calls = []
    make = lambda: calls.append(1) or np.arange(50)  # noqa: E731
    cache.derived(case_dirs[0], "region-x", make)
    _flip_byte(entry / "region-x.npy")
    with pytest.warns(UserWarning, match=r"corrupt cached array .*region-x\.npy"):
        np.testing.assert_array_equal(cache.derived(case_dirs[0], "region-x", make), np.arange(50))
    np.save(entry / "region-x.npy", np.array([_Evil(tmp_path / "ran")], dtype=object), allow_pickle=True)
    with pytest.warns(UserWarning, match=r"region-x\.npy .*not plain numbers"):
        np.testing.assert_array_equal(cache.derived(case_dirs[0], "region-x", make), np.arange(50))
    assert len(calls) == 3 and not (tmp_path / "ran").exists()


def test_killed_cache_writer_leaves_nothing_after_the_next_load(tmp_path, case_dirs):
    """kill -9 in the middle of writing an entry: the temporary folder it
    strands (was: a hidden folder of the case's size, forever) goes on the next load."""
    cache_dir = tmp_path / "cache"
    killed = _python(f"""
        import os, signal
        import numpy as np
        real = np.save
        def save(path, *a, **kw):
            real(path, *a, **kw)
            os.kill(os.getpid(), signal.SIGKILL)
        np.save = save
        from omkit.data import PreprocessedCache
        PreprocessedCache({str(cache_dir)!r}).load({str(case_dirs[0])!r})
    """)
    assert killed.wait(timeout=120) == -signal.SIGKILL
    assert [p.name.endswith(".tmpdir") for p in cache_dir.iterdir()] == [True]
    from omkit.data import PreprocessedCache

    cache = PreprocessedCache(cache_dir)
    cache.load(case_dirs[0])
    assert _hidden(cache_dir) == []


# -- cases: blank modalities, two cases in a folder, hostile NIfTI headers --------------------

def _case_copy(case_dir: Path, root: Path) -> Path:
    import shutil

    target = root / case_dir.name
    shutil.copytree(case_dir, target)
    return target


def _rewrite_volume(path: Path, fn) -> None:
    import nibabel as nib

    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(fn(np.asanyarray(img.dataobj)), img.affine), str(path))


@pytest.mark.parametrize("blank", ["zero", "constant"])
def test_a_blank_modality_is_an_error_naming_the_file(tmp_path, case_dirs, blank):
    from omkit.data import CaseError, load_case

    case = _case_copy(case_dirs[0], tmp_path)
    t1c = next(case.glob("*_t1ce.nii.gz"))
    _rewrite_volume(t1c, lambda a: np.zeros_like(a) if blank == "zero" else np.full_like(a, 7))
    what = "all zero" if blank == "zero" else r"constant \(7\) inside the brain"
    with pytest.raises(CaseError, match=rf"^{re.escape(str(t1c))}: the T1C modality is {what}"):
        load_case(case)


def test_a_constant_channel_normalises_to_zero():
    from omkit.data.preprocess import zscore_in_mask

    image = np.stack([np.arange(8, dtype=np.float32).reshape(2, 2, 2), np.full((2, 2, 2), 3.0, np.float32)])
    mask = np.ones((2, 2, 2), bool)
    out = zscore_in_mask(image, mask)
    assert np.isfinite(out).all() and not out[1].any() and abs(out[0].std() - 1) < 1e-6
    assert not zscore_in_mask(image, np.zeros_like(mask)).any()  # an empty mask: nothing to scale


def test_a_folder_holding_two_cases_is_an_error(tmp_path, case_dirs):
    import shutil

    from omkit.data import CaseError, load_case

    both = tmp_path / "both"
    both.mkdir()
    for case in case_dirs[:2]:
        for f in case.iterdir():
            shutil.copy(f, both / f.name)
    with pytest.raises(CaseError, match=r"both: holds 2 complete cases \(Synth18_000, Synth18_001\); put each"):
        load_case(both)


def test_a_broken_ground_truth_is_a_warning_when_it_is_optional(tmp_path, case_dirs):
    from omkit.data import CaseError, load_case

    case = _case_copy(case_dirs[0], tmp_path)
    seg = next(case.glob("*_seg.nii.gz"))
    seg.write_bytes(b"not a nifti")
    with pytest.raises(CaseError, match=re.escape(str(seg))):
        load_case(case)
    with pytest.warns(UserWarning, match=rf"{re.escape(str(seg))}: unreadable NIfTI .*going on without"):
        loaded = load_case(case, with_label=None)
    assert loaded.label is None and "seg" not in loaded.paths
    seg.unlink()
    assert load_case(case, with_label=None).label is None  # no segmentation: no label, no warning


# NIfTI-1 header fields and the values a hostile or corrupt file may hold in them
_HEADER_FIELDS = ["dim", "pixdim", "datatype", "bitpix", "vox_offset", "scl_slope", "scl_inter", "qform_code",
                  "sform_code", "srow_x", "srow_z", "quatern_b", "qoffset_x", "sizeof_hdr", "dim_info", "intent_code"]


@pytest.fixture(scope="module")
def nifti_case(tmp_path_factory, case_dirs):
    """A case with uncompressed files (the header bytes are edited in place)."""
    import nibabel as nib

    root = tmp_path_factory.mktemp("nifti") / case_dirs[0].name
    root.mkdir()
    for f in case_dirs[0].iterdir():
        img = nib.load(str(f))
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine), str(root / f.name.replace(".nii.gz", ".nii")))
    return root


def test_hostile_nifti_headers_are_one_line_case_errors(nifti_case):
    """Property: whatever a header field holds, ``load_case`` returns a case
    or raises a :class:`CaseError` naming the file; never another exception,
    never a read of more voxels than any MRI has."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st
    from nibabel.nifti1 import header_dtype

    from omkit.data import CaseError, load_case

    target = next(nifti_case.glob("*_t1.nii"))
    pristine = target.read_bytes()
    values = st.one_of(st.integers(-(2**31), 2**31 - 1), st.floats(width=32),
                       st.sampled_from([0, -1, 1, 2**15 - 1, float("nan"), float("inf"), 1e30]))

    @hypothesis.settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @hypothesis.given(field=st.sampled_from(_HEADER_FIELDS + ["seg:" + f for f in ("dim", "datatype", "scl_slope")]),
                      index=st.integers(0, 7), value=values)
    def check(field, index, value):
        path = target
        if field.startswith("seg:"):
            path, field = next(nifti_case.glob("*_seg.nii")), field[4:]
        original = path.read_bytes() if path != target else pristine
        header = np.frombuffer(bytearray(original[:348]), dtype=header_dtype).copy()
        slot = header[field][0]
        kind = header_dtype[field].base
        if kind.kind in "iu":
            hypothesis.assume(np.isfinite(value) and np.iinfo(kind).min <= value <= np.iinfo(kind).max)
            value = int(value)
        with np.errstate(over="ignore"):
            cast = np.array(value, dtype=kind)
        if np.ndim(slot):
            header[field][0][index % len(slot)] = cast
        else:
            header[field][0] = cast
        path.write_bytes(header.tobytes() + original[348:])
        try:
            case = load_case(nifti_case)
        except CaseError as exc:
            message = str(exc)
            assert "\n" not in message and message.startswith(str(nifti_case)), message
            outcomes.append(message.split(": ", 1)[1][:25])
        else:
            outcomes.append("loaded")
            assert case.image.shape[0] == 4 and np.isfinite(case.image).all()
            assert all(np.isfinite(s) and s > 0 for s in case.spacing)
        finally:
            path.write_bytes(original)

    outcomes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel warns about odd headers; the outcome is what is checked
        check()
    assert "loaded" in outcomes and len(set(outcomes)) > 3, outcomes  # the fuzzing reaches both outcomes


# -- model files: weights-only, metadata checked field by field, one line naming the file -------

@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import omkit
    from omkit.checkpoint import save_model

    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(omkit.create_model("omnet_cga", width=0.125), path, patch_size=[8, 16, 16])
    return path


def test_a_crafted_model_file_is_refused_without_running_it(tmp_path, model_file):
    import torch

    from omkit.checkpoint import ModelFileError, load_model

    payload = torch.load(model_file, weights_only=True)
    flag = tmp_path / "ran"
    for where in ("meta", "state_dict"):
        crafted = tmp_path / f"{where}.pt"
        torch.save({**payload, where: {**payload[where], "x": _Evil(flag)}}, crafted)
        with pytest.raises(ModelFileError, match=rf"^{re.escape(str(crafted))}: refusing to load it: .*could run code"):
            load_model(crafted)
    assert not flag.exists()


@pytest.mark.parametrize("field, value, message", [
    ("meta", "x", "not an omkit model file"),
    ("preset", None, "preset must be a preset name"),
    ("preset", "nope", "cannot build preset 'nope'"),
    ("width", "wide", "width must be a number"),
    ("width", float("nan"), "width must be a number"),
    ("width", 1e12, "width must be a number"),
    ("model_options", [1], "model_options must map option names"),
    ("model_options", {"dropout": "high"}, "cannot build preset"),
    ("inference", {"mode": "fast"}, "inference must give a mode among auto, dense, tiles"),
    ("train_windows", {"window": [16, 32]}, "train_windows.window must be three positive sizes"),
    ("surprise", 1, "unknown field 'surprise'"),
    ("patch_size", "x", "patch_size must be three positive sizes"),
    ("label_convention", "1999", "label_convention must be 2018, 2023 or 2024"),
    ("format_version", 99, "format_version is 99"),
    ("state_dict", None, "state_dict must map names to tensors"),
    ("state_dict", {}, "weights do not match preset"),
])
def test_malformed_model_metadata_is_one_line_naming_the_file(tmp_path, model_file, field, value, message):
    import torch

    from omkit.checkpoint import ModelFileError, load_model

    payload = torch.load(model_file, weights_only=True)
    if field in ("meta", "state_dict"):
        payload[field] = value
    elif field == "format_version":
        payload["meta"][field] = value
    else:  # a field of the model card (omkit.model_card)
        payload["meta"]["card"][field] = value
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value) and "\n" not in str(info.value)


# -- plug-in blocking: a misspelt name is an error; a blocked plug-in is named where it is missed ---

def test_blocking_an_unknown_plugin_is_an_error_and_a_blocked_one_is_named(monkeypatch):
    import omkit
    from omkit.plugin_manager import BLOCK_ENV
    from omkit.registry import PluginError

    monkeypatch.delenv(BLOCK_ENV, raising=False)
    try:
        with pytest.raises(PluginError, match=r"^block: no plug-in named 'atention' to block; plug-ins: attention,"):
            omkit.setup_plugins(block=["atention"])
        monkeypatch.setenv(BLOCK_ENV, "nosuch")
        with pytest.raises(PluginError, match=rf"^{BLOCK_ENV}: no plug-in named 'nosuch'"):
            omkit.setup_plugins()
        monkeypatch.delenv(BLOCK_ENV)
        omkit.setup_plugins(block=["attention"])
        with pytest.raises(KeyError, match=r"unknown attention 'cga'; available: \(none\); blocked plug-ins: attention"):
            omkit.create_model("omnet_cga", width=0.125)
    finally:
        monkeypatch.delenv(BLOCK_ENV, raising=False)
        omkit.setup_plugins()


# -- the ablation's resume state: JSON, checked, redone when malformed -----------------------

def test_saved_ablation_scores_are_checked_and_never_run(tmp_path):
    import pickle

    from omkit.ablation import read_scores

    path = tmp_path / "scores.json"
    assert read_scores(path, "omnet", "fold0") is None  # nothing saved yet
    good = {"row": "omnet", "split": "fold0", "title": "OM-Net", "parameters": 10,
            "cases": [{"case": "c", "variant": "raw", "region": "WT", "dice": 0.5, "hd95": 3.0}]}
    path.write_text(json.dumps(good))
    assert read_scores(path, "omnet", "fold0") == good
    flag = tmp_path / "ran"
    for bad in (pickle.dumps(_Evil(flag)), b"{\"row\": 1}", json.dumps({**good, "split": "fold1"}).encode()):
        path.write_bytes(bad)
        with pytest.warns(UserWarning, match=rf"{re.escape(str(path))}: unreadable saved scores .*scoring the row again"):
            assert read_scores(path, "omnet", "fold0") is None
    assert not flag.exists()


# -- run folders: validated before replaced, only omkit's, locked while in use ----------------

TINY_TRAIN = ["--width", "0.125", "--patch-size", "8,16,16", "--batch-per-task", "2", "--patches-per-epoch", "4,4,2",
              "--stage-epochs", "1,1,1", "--no-progress", "--device", "cpu", "--threads", "1"]


def _train_cli(*argv, cache: Path) -> subprocess.CompletedProcess:
    """``omkit train ARGV`` in this process (what it prints to stderr, its exit status)."""
    import contextlib
    import io

    from omkit.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(["train", *map(str, argv), "--cache-dir", str(cache)])
        except SystemExit as exc:  # argparse
            code = exc.code
    return subprocess.CompletedProcess(["omkit", "train", *map(str, argv)], code, "", err.getvalue())


def _one_line_error(result, *needles: str) -> str:
    err = result.stderr.strip()
    assert result.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, case_dirs):
    """A finished tiny run (and its cache) to copy."""
    from omkit.training import TrainConfig, train

    root = tmp_path_factory.mktemp("run")
    train(TrainConfig(preset="omnet_cga", input=str(case_dirs[0].parent), output=str(root / "run"),
                      cache_dir=str(root / "cache"), width=0.125, patch_size=(8, 16, 16), batch_per_task=2,
                      patches_per_epoch=(4, 4, 2), stage_epochs=(1, 1, 1), max_steps=2, progress=False))
    return root


def _copy_run(tiny_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    shutil.copytree(tiny_run / "run", tmp_path / "run")
    shutil.copytree(tiny_run / "cache", tmp_path / "cache")
    return tmp_path / "run", tmp_path / "cache"


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.name != ".omkit-lock"}


def test_a_run_folder_holds_omkits_marker_and_a_lock_file(tiny_run):
    import json as _json

    run = tiny_run / "run"
    marker = _json.loads((run / ".omkit-run").read_text())
    assert marker["format"] == "omkit-run" and marker["pid"] > 0 and marker["host"]
    assert (run / ".omkit-lock").is_file()  # kept, unlocked: a lock dies with its process


@pytest.mark.parametrize("problem", ["nan_input", "bad_fold", "bad_sampler", "seed"])
def test_force_checks_everything_before_it_replaces_a_run(tmp_path, tiny_run, case_dirs, problem):
    """Was: the old run deleted first, then the NaN input / --fold 3 refused."""
    import shutil

    run, cache = _copy_run(tiny_run, tmp_path)
    data = tmp_path / "data"
    shutil.copytree(case_dirs[0].parent, data)
    extra = []
    if problem == "nan_input":
        _rewrite_volume(next((data / case_dirs[1].name).glob("*_t1.nii.gz")),
                        lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, np.nan, a.astype(np.float32)))
        needle = "non-finite"
    elif problem == "bad_fold":
        extra, needle = ["--folds", "2", "--fold", "3"], "--fold"
    elif problem == "bad_sampler":
        extra, needle = ["--samplers", "brain,nosuch,core"], "--samplers"
    else:
        extra, needle = ["--seed", "-1"], "--seed"
    before = _snapshot(run)
    result = _train_cli("-i", data, "-o", run, *TINY_TRAIN, "--max-steps", "1", "--force", *extra, cache=cache)
    _one_line_error(result, needle)
    assert _snapshot(run) == before  # the old run, untouched


def test_force_never_deletes_a_folder_omkit_did_not_make(tmp_path, tiny_run, case_dirs):
    """Was: a user folder holding config.json and checkpoints/notes.txt was deleted."""
    _, cache = _copy_run(tiny_run, tmp_path)
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "config.json").write_text("{}")
    (mine / "checkpoints" / "notes.txt").write_text("mine")
    result = _train_cli("-i", case_dirs[0].parent, "-o", mine, *TINY_TRAIN, "--max-steps", "1", "--force", cache=cache)
    _one_line_error(result, "not an omkit run folder", ".omkit-run")
    assert sorted(p.name for p in mine.rglob("*")) == ["checkpoints", "config.json", "notes.txt"]


def test_a_failed_new_run_leaves_nothing_behind(tmp_path, tiny_run, case_dirs):
    _, cache = _copy_run(tiny_run, tmp_path)
    for extra, needle in ((["--samplers", "brain,nosuch,core"], "--samplers"),
                          (["--folds", "2", "--fold", "3"], "--fold"),
                          (["--attention", "nosuch"], "--attention")):
        target = tmp_path / "new" / "run"
        _one_line_error(_train_cli("-i", case_dirs[0].parent, "-o", target, *TINY_TRAIN, *extra, cache=cache), needle)
        assert not (tmp_path / "new").exists()  # not even the parent it made
        target.mkdir(parents=True)
        _one_line_error(_train_cli("-i", case_dirs[0].parent, "-o", target, *TINY_TRAIN, *extra, cache=cache), needle)
        assert list(target.iterdir()) == []  # an empty folder stays empty
        target.rmdir()
        target.parent.rmdir()


def test_a_second_process_on_a_run_folder_is_refused_naming_the_holder(tmp_path, tiny_run, case_dirs):
    """Was: two trains on one folder, a second apart, both exited 0 and one's results replaced the other's."""
    import socket

    _, cache = _copy_run(tiny_run, tmp_path)
    run = tmp_path / "busy"
    env = dict(os.environ, OMP_NUM_THREADS="1", OMKIT_CACHE_DIR=str(cache))
    first = subprocess.Popen([sys.executable, "-m", "omkit", "train", "-i", str(case_dirs[0].parent), "-o", str(run),
                              *TINY_TRAIN, "--max-steps", "400", "--patches-per-epoch", "2000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while not (run / ".omkit-lock").is_file() or str(first.pid) not in (run / ".omkit-lock").read_text():
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.05)
        for extra in ([], ["--force"]):
            second = _train_cli("-i", case_dirs[0].parent, "-o", run, *TINY_TRAIN, "--max-steps", "1", *extra,
                                cache=cache)
            _one_line_error(second, "in use by another omkit process", f"pid {first.pid} on {socket.gethostname()}")
        assert first.poll() is None  # the first run goes on
        resumed = _train_cli("-i", case_dirs[0].parent, "-o", run, "--resume", "--no-progress", cache=cache)
        _one_line_error(resumed, "in use by another omkit process")
    finally:
        first.kill()
        first.communicate()
    # the holder died (kill -9 alike): the lock went with it
    again = _train_cli("-i", case_dirs[0].parent, "-o", run, *TINY_TRAIN, "--max-steps", "1", "--force", cache=cache)
    assert again.returncode == 0, again.stderr


def test_the_other_ranks_of_a_resumed_run_leave_the_lock_to_rank_0(tmp_path, tiny_run, case_dirs, monkeypatch):
    """Was: `torchrun ... omkit train --resume` on a loaded machine: a rank that started late checked the
    run folder's lock after its own rank 0 had taken it, and exited 2 ("in use by another omkit process")."""
    from omkit.training import distributed
    from omkit.training.run_folder import RunLock

    run, cache = _copy_run(tiny_run, tmp_path)

    class AtTheBarrier(Exception):
        """Past the folder checks: where the ranks meet after rank 0 claimed the folder."""

    def barrier(processes):
        raise AtTheBarrier

    monkeypatch.setattr(distributed, "barrier", barrier)
    monkeypatch.setattr(distributed, "stop", lambda processes: None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    lock = RunLock(run).acquire()  # rank 0's, taken before a slow rank 1 gets to its checks
    try:
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setattr(distributed, "start", lambda device: distributed.Processes(rank=1, world_size=2,
                                                                                        local_rank=1))
        with pytest.raises(AtTheBarrier):
            _train_cli("-i", case_dirs[0].parent, "-o", run, "--resume", "--no-progress", cache=cache)
        # rank 0 still fails fast when another process holds the folder
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setattr(distributed, "start", lambda device: distributed.Processes(rank=0, world_size=2))
        _one_line_error(_train_cli("-i", case_dirs[0].parent, "-o", run, "--resume", "--no-progress", cache=cache),
                        "in use by another omkit process")
    finally:
        lock.release()


def test_a_non_finite_loss_stops_training_without_a_model(tmp_path, tiny_run, case_dirs):
    """Was: --lr 1e30 trained to the end and wrote a model.pt of NaN weights, exit 0."""
    import json as _json

    import torch

    _, cache = _copy_run(tiny_run, tmp_path)
    run = tmp_path / "diverged"
    result = _train_cli("-i", case_dirs[0].parent, "-o", run, *TINY_TRAIN, "--lr", "1e30", "--optimizer", "sgd",
                        "--checkpoint-every", "1", cache=cache)
    err = _one_line_error(result, "training diverged: non-finite loss", "no model.pt was written", "--lr")
    assert f"{run / 'checkpoints' / 'last.pt'}, step 1" in err
    assert not (run / "model.pt").exists()
    kept = torch.load(run / "checkpoints" / "last.pt", weights_only=True)  # the step before, finite
    assert kept["state"]["global_step"] == 1
    assert all(torch.isfinite(t).all() for t in kept["model"].values() if t.is_floating_point())
    assert _json.loads((run / "metrics.json").read_text())["stopped_by"] == "diverged"


# -- predict on a cohort: idempotent reruns, bad cases reported at the end, torchrun shards ----

FAST_TILES = ["--tile-size", "8,16,16", "--tile-keep", "8,16,16", "--no-progress", "--device", "cpu"]


def _predict(*argv) -> int:
    from omkit.cli import main

    return main(["predict", *FAST_TILES, *map(str, argv)])


def test_predict_skip_existing_does_only_what_is_left(tmp_path, case_dirs, model_file, capsys):
    out = tmp_path / "out"
    assert _predict("-i", case_dirs[0].parent, "-o", out, "-m", model_file) == 0
    assert "wrote 3 case(s)" in capsys.readouterr().out
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / f"{case_dirs[1].name}.nii.gz").unlink()
    assert _predict("-i", case_dirs[0].parent, "-o", out, "-m", model_file, "--skip-existing") == 0
    assert "wrote 1 case(s)" in (said := capsys.readouterr().out) and "2 had all their outputs already" in said
    again = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert set(again) == set(first)
    assert all(again[n] == first[n] for n in first if not n.startswith(case_dirs[1].name))  # the others untouched
    # an overlay asked for later: only the overlays are written
    assert _predict("-i", case_dirs[0].parent, "-o", out, "-m", model_file, "--skip-existing", "--overlay") == 0
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".png")) == [f"{c.name}_overlay.png" for c in case_dirs]
    assert all(out.joinpath(n).stat().st_mtime_ns == again[n] for n in again)
    assert _predict("-i", case_dirs[0].parent, "-o", out, "-m", model_file, "--skip-existing", "--force") == 2


def test_predict_skip_bad_cases_reports_them_at_the_end(tmp_path, case_dirs, model_file, capsys):
    """Was: one bad case in a folder aborted the whole predict, with no way to go on."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(case_dirs[0].parent, data)
    blank = next((data / case_dirs[0].name).glob("*_t2.nii.gz"))
    _rewrite_volume(blank, np.zeros_like)
    broken = next((data / case_dirs[2].name).glob("*_flair.nii.gz"))
    broken.write_bytes(b"garbage")
    out = tmp_path / "out"
    assert _predict("-i", data, "-o", out, "-m", model_file) == 2
    err = capsys.readouterr().err
    assert str(blank) in err and "--skip-bad-cases goes on" in err and len(err.strip().splitlines()) == 1
    assert _predict("-i", data, "-o", out, "-m", model_file, "--skip-bad-cases") == 1
    captured = capsys.readouterr()
    assert "wrote 1 case(s)" in captured.out
    lines = captured.err.strip().splitlines()
    assert lines[0].startswith(f"omkit predict: failed: {blank}: the T2 modality is all zero")
    assert lines[1].startswith(f"omkit predict: failed: {broken}: unreadable NIfTI file")
    assert lines[2] == "omkit predict: 2 of 3 case(s) failed (listed above); the others were written"
    assert [p.name for p in out.iterdir()] == [f"{case_dirs[1].name}.nii.gz"]


def test_predict_overlay_goes_on_without_a_broken_ground_truth(tmp_path, case_dirs, model_file, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(case_dirs[0].parent, data)
    seg = next((data / case_dirs[0].name).glob("*_seg.nii.gz"))
    seg.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=rf"^{re.escape(str(seg))}: unreadable NIfTI file .*going on without"):
        assert _predict("-i", data, "-o", tmp_path / "out", "-m", model_file, "--overlay") == 0
    assert len(list((tmp_path / "out").glob("*_overlay.png"))) == 3


def test_killed_predict_strands_nothing_after_a_rerun(tmp_path, case_dirs, model_file):
    """kill -9 in the middle of writing a label map: was a '.<case>.nii.gz.*.tmp.nii.gz' left forever."""
    out = tmp_path / "out"
    killed = _python(f"""
        import os, signal, sys
        import nibabel as nib
        real = nib.save
        def save(image, path):
            real(image, path)
            os.kill(os.getpid(), signal.SIGKILL)
        nib.save = save
        from omkit.cli import main
        main(["predict", *{FAST_TILES!r}, "-i", {str(case_dirs[0].parent)!r}, "-o", {str(out)!r},
              "-m", {str(model_file)!r}])
    """)
    assert killed.wait(timeout=120) == -signal.SIGKILL
    (stranded,) = out.iterdir()
    assert is_temporary(stranded.name) and stranded.name.startswith(f".{case_dirs[0].name}.nii.gz.")
    assert _predict("-i", case_dirs[0].parent, "-o", out, "-m", model_file, "--skip-existing") == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{c.name}.nii.gz" for c in case_dirs)


def test_killed_training_strands_nothing_and_force_starts_over(tmp_path, tiny_run, case_dirs):
    """kill -9 while writing the first checkpoint: was '.last.pt.*.tmp.pt' left, and a run that neither
    --resume nor a plain rerun could use."""
    _, cache = _copy_run(tiny_run, tmp_path)
    run = tmp_path / "run2"
    killed = _python(f"""
        import os, signal, torch
        real = torch.save
        def save(obj, f, *a, **kw):
            real(obj, f, *a, **kw)
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = save
        from omkit.cli import main
        main(["train", *{TINY_TRAIN!r}, "-i", {str(case_dirs[0].parent)!r}, "-o", {str(run)!r}, "--max-steps", "2",
              "--cache-dir", {str(cache)!r}])
    """)
    assert killed.wait(timeout=120) == -signal.SIGKILL
    assert any(is_temporary(p.name) for p in (run / "checkpoints").iterdir())
    _one_line_error(_train_cli("-i", case_dirs[0].parent, "-o", run, "--resume", cache=cache), "nothing to resume")
    again = _train_cli("-i", case_dirs[0].parent, "-o", run, *TINY_TRAIN, "--max-steps", "2", "--force", cache=cache)
    assert again.returncode == 0, again.stderr
    assert [p for p in run.rglob(".*") if p.name not in (".omkit-run", ".omkit-lock")] == []


def test_train_skip_bad_cases_covers_any_failure_of_one_case(tmp_path, case_dirs, monkeypatch):
    from omkit.data import CaseError
    from omkit.training import TrainConfig, data as training_data, train

    real = training_data.region_indices

    def region_indices(sampler, pre, *a, **kw):
        if pre.case_id == case_dirs[1].name:
            raise IndexError("a sampler that fails on this case")
        return real(sampler, pre, *a, **kw)

    monkeypatch.setattr(training_data, "region_indices", region_indices)
    settings = dict(preset="omnet_cga", input=str(case_dirs[0].parent), cache_dir=str(tmp_path / "cache"), width=0.125,
                    patch_size=(8, 16, 16), batch_per_task=2, patches_per_epoch=(4, 4, 2), stage_epochs=(1, 1, 1),
                    max_steps=1, progress=False)
    with pytest.raises(CaseError, match=rf"^{re.escape(str(case_dirs[1]))}: IndexError: a sampler that fails"):
        train(TrainConfig(**settings, output=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
    with pytest.warns(UserWarning, match=rf"skipping case: {re.escape(str(case_dirs[1]))}: IndexError"):
        run = train(TrainConfig(**settings, output=str(tmp_path / "run"), skip_bad_cases=True))
    assert json.loads((run / "config.json").read_text())["cases"] == [case_dirs[0].name, case_dirs[2].name]


@pytest.mark.skipif(not __import__("torch").distributed.is_available()
                    or not __import__("torch").distributed.is_gloo_available(), reason="no gloo backend")
def test_torchrun_predict_writes_every_case_exactly_once(tmp_path, model_file):
    from omkit.data.synthetic import make_dataset

    make_dataset(tmp_path / "data", num_cases=5, shape=(16, 32, 32), seed=40)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "omkit",
               "predict", "-i", str(tmp_path / "data"), "-o", str(out), "-m", str(model_file), *FAST_TILES]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # each process reports what it wrote (the shared queue decides how many each took): writes adding up
    # to 5 for 5 files means each case was written once
    counts = re.search(rf"wrote 5 case\(s\) to {re.escape(str(out))} \(2 processes: (\d+) \+ (\d+)\)", result.stdout)
    assert counts and sum(map(int, counts.groups())) == 5, result.stdout
    assert result.stdout.count("wrote ") == 1  # one report, from the first process
    assert sorted(p.name for p in out.iterdir()) == [f"Synth18_{i:03d}.nii.gz" for i in range(5)]  # claims removed
    fixed = subprocess.run(command + ["--shard", "round-robin", "--force"], capture_output=True, text=True, timeout=300,
                           env=env)
    assert fixed.returncode == 0 and f"wrote 5 case(s) to {out} (2 processes: 3 + 2)" in fixed.stdout, fixed.stderr
    rerun = subprocess.run(command + ["--skip-existing"], capture_output=True, text=True, timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "wrote 0 case(s)" in rerun.stdout and "5 had all their outputs already" in rerun.stdout


def test_crafted_or_malformed_resume_state_is_one_line_and_runs_nothing(tmp_path, tiny_run, case_dirs):
    """Everything --resume reads: config.json (JSON) and last.pt (weights-only)."""
    import pickle

    import torch

    from omkit.training import TrainConfig, train

    run, cache = _copy_run(tiny_run, tmp_path)
    flag = tmp_path / "ran"
    config = TrainConfig(preset="omnet_cga", input=str(case_dirs[0].parent), output=str(run), cache_dir=str(cache),
                         width=0.125, patch_size=(8, 16, 16), batch_per_task=2, patches_per_epoch=(4, 4, 2),
                         stage_epochs=(1, 1, 1), progress=False)
    last = run / "checkpoints" / "last.pt"
    payload = torch.load(last, weights_only=True)
    for name, content in [("config.json", pickle.dumps(_Evil(flag))), ("config.json", b'{"config": [1, 2]}'),
                          ("checkpoints/last.pt", {**payload, "state": {**payload["state"], "x": _Evil(flag)}}),
                          ("checkpoints/last.pt", {**payload, "model": "weights"}),
                          ("checkpoints/last.pt", {**payload, "rng": {"per_rank": []}}),
                          ("checkpoints/last.pt", {**payload, "model": {"x": torch.zeros(1)}})]:
        run2 = tmp_path / "copy"
        import shutil

        shutil.rmtree(run2, ignore_errors=True)
        shutil.copytree(run, run2)
        target = run2 / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            torch.save(content, target)
        with pytest.raises(ValueError) as info:
            train(TrainConfig(**{**config.to_dict(), "output": str(run2)}), resume=True)
        message = str(info.value)
        assert message.startswith(str(target)) and "\n" not in message, message
    assert not flag.exists()


def test_two_trains_started_together_one_runs_the_other_is_refused(tmp_path, tiny_run, case_dirs):
    _, cache = _copy_run(tiny_run, tmp_path)
    run = tmp_path / "race"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "omkit", "train", "-i", str(case_dirs[0].parent), "-o", str(run),
                               *TINY_TRAIN, "--max-steps", "4", "--seed", str(seed), "--cache-dir", str(cache)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for seed in (1, 2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    results = [(p.returncode, err) for p, err in zip(procs, errors)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    winner = [i for i, (code, _) in enumerate(results) if code == 0][0]
    loser_err = results[1 - winner][1].strip()
    assert len(loser_err.splitlines()) == 1 and ("in use by another omkit process" in loser_err
                                                 or "run folder exists" in loser_err), loser_err
    assert json.loads((run / "config.json").read_text())["config"]["seed"] == winner + 1  # the winner's run, whole
    assert (run / "model.pt").is_file()
