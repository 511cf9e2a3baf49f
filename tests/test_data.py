"""omkit.data: both BraTS namings, every validation rule, preprocessing, the cache."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from omkit.data import (
    CaseError,
    PreprocessedCache,
    find_cases,
    kfold_split,
    load_case,
    load_cases,
    preprocess_case,
    uncrop,
    validate_cases,
)
from omkit.data import synthetic
from omkit.labels import BRATS2018, EDEMA, ENHANCING, NCR_NET, NORMAL

SHAPE = (16, 32, 32)


@pytest.fixture
def case():
    return synthetic.make_case(SHAPE, seed=3)


@pytest.fixture
def case_dir(tmp_path, case):
    return synthetic.write_case(case, tmp_path / "data", naming="2018")


def _file(case_dir: Path, suffix: str) -> Path:
    return next(p for p in case_dir.iterdir() if p.name.endswith(suffix))


def _rewrite(path: Path, array=None, affine=None):
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj) if array is None else array
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), str(path))


# -- both namings, both extensions ------------------------------------------------

@pytest.mark.parametrize("naming,compress", [("2018", True), ("2023", True), ("2018", False), ("2023", False)])
def test_round_trip_both_namings(tmp_path, case, naming, compress):
    folder = synthetic.write_case(case, tmp_path, naming=naming, compress=compress)
    ext = ".nii.gz" if compress else ".nii"
    assert all(p.name.endswith(ext) for p in folder.iterdir())
    loaded = load_case(folder)
    assert loaded.convention == naming and loaded.naming == naming
    assert loaded.case_id == case.case_id
    assert loaded.image.dtype == np.float32 and loaded.image.shape == (4,) + SHAPE
    np.testing.assert_array_equal(loaded.image, case.image)
    np.testing.assert_array_equal(loaded.label, case.label)
    assert {ENHANCING, NCR_NET, EDEMA, NORMAL} <= set(np.unique(loaded.label).tolist())


def test_2023_enhancing_label_is_3_on_disk(tmp_path, case):
    folder = synthetic.write_case(case, tmp_path, naming="2023")
    seg = np.asanyarray(nib.load(str(_file(folder, "-seg.nii.gz"))).dataobj)
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 3}
    # read with the wrong convention, label 3 is edema-free "unknown": 3 is not valid in 2018
    with pytest.raises(CaseError, match=r"-seg\.nii\.gz: label values \[3\]"):
        load_case(folder, label_convention="2018")


def test_convention_override(tmp_path, case):
    folder = synthetic.write_case(case, tmp_path, naming="2023")
    # a 2018-labelled seg file stored with 2023 names: override the convention
    seg_path = _file(folder, "-seg.nii.gz")
    _rewrite(seg_path, np.transpose(BRATS2018.from_internal(case.label), (1, 2, 0)).astype(np.uint8))
    loaded = load_case(folder, label_convention="2018")
    assert loaded.convention == "2018"
    np.testing.assert_array_equal(loaded.label, case.label)


def test_axis_order_is_z_first(tmp_path, case):
    folder = synthetic.write_case(case, tmp_path)
    on_disk = np.asanyarray(nib.load(str(_file(folder, "_flair.nii.gz"))).dataobj)
    assert on_disk.shape == (SHAPE[1], SHAPE[2], SHAPE[0])
    np.testing.assert_array_equal(np.transpose(on_disk, (2, 0, 1)), load_case(folder).image[0])


def test_find_cases(tmp_path, case):
    synthetic.make_dataset(tmp_path / "many", num_cases=2, shape=SHAPE)
    found = find_cases(tmp_path / "many")
    assert [p.name for p in found] == ["Synth18_000", "Synth18_001"]
    assert find_cases(found[0]) == [found[0]]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no BraTS case folders"):
        find_cases(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nothere"):
        find_cases(tmp_path / "nothere")


def test_without_label(tmp_path, case):
    folder = synthetic.write_case(case, tmp_path, with_label=False)
    assert load_case(folder, with_label=False).label is None
    with pytest.raises(CaseError, match=r"_seg\.nii\.gz: missing \(segmentation"):
        load_case(folder)


# -- validation: one rule per test, each message names the file ----------------------

def test_missing_modality(case_dir):
    _file(case_dir, "_t1ce.nii.gz").unlink()
    with pytest.raises(CaseError, match=r"_t1ce\.nii\.gz: missing \(T1C modality"):
        load_case(case_dir)


def test_not_3d(case_dir):
    path = _file(case_dir, "_t2.nii.gz")
    _rewrite(path, np.zeros((SHAPE[1], SHAPE[2], SHAPE[0], 2), dtype=np.int16))
    with pytest.raises(CaseError, match=r"_t2\.nii\.gz: expected a 3-D volume, got 4-D"):
        load_case(case_dir)


def test_shape_mismatch(case_dir):
    path = _file(case_dir, "_t1.nii.gz")
    _rewrite(path, np.ones((SHAPE[1], SHAPE[2], SHAPE[0] + 1), dtype=np.int16))
    with pytest.raises(CaseError, match=r"_t1\.nii\.gz: shape .* differs from .*_flair\.nii\.gz"):
        load_case(case_dir)


def test_affine_mismatch(case_dir):
    path = _file(case_dir, "_t2.nii.gz")
    affine = nib.load(str(path)).affine.copy()
    affine[0, 3] += 2.0
    _rewrite(path, affine=affine)
    with pytest.raises(CaseError, match=r"_t2\.nii\.gz: affine differs .* not co-registered"):
        load_case(case_dir)
    # a rounding-level difference is inside the tolerance
    affine[0, 3] -= 2.0 - 1e-5
    _rewrite(path, affine=affine)
    load_case(case_dir)


def test_non_finite(case_dir):
    path = _file(case_dir, "_flair.nii.gz")
    data = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)
    data[3, 4, 5] = np.nan
    _rewrite(path, data)
    with pytest.raises(CaseError, match=r"_flair\.nii\.gz: 1 non-finite"):
        load_case(case_dir)


def test_label_outside_convention(case_dir):
    path = _file(case_dir, "_seg.nii.gz")
    data = np.asanyarray(nib.load(str(path)).dataobj).copy()
    data[0, 0, 0] = 7
    _rewrite(path, data)
    with pytest.raises(CaseError, match=r"_seg\.nii\.gz: label values \[7\] are not in the 2018"):
        load_case(case_dir)


def test_unreadable_file(case_dir):
    _file(case_dir, "_t1.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(CaseError, match=r"_t1\.nii\.gz: unreadable NIfTI"):
        load_case(case_dir)


def test_duplicate_extension(case_dir):
    src = _file(case_dir, "_t2.nii.gz")
    nib.save(nib.load(str(src)), str(src).replace(".nii.gz", ".nii"))
    with pytest.raises(CaseError, match=r"_t2\.nii\.gz and .*_t2\.nii exist"):
        load_case(case_dir)


def test_empty_brain(case_dir):
    for suffix in ("_flair.nii.gz", "_t1.nii.gz", "_t1ce.nii.gz", "_t2.nii.gz"):
        _rewrite(_file(case_dir, suffix), np.zeros((SHAPE[1], SHAPE[2], SHAPE[0]), dtype=np.int16))
    with pytest.raises(CaseError, match="no brain"):
        load_case(case_dir)


def test_skip_bad_cases_warns_and_goes_on(tmp_path):
    good, bad = synthetic.make_dataset(tmp_path, num_cases=2, shape=SHAPE)
    _file(bad, "_flair.nii.gz").unlink()
    with pytest.raises(CaseError, match="_flair"):
        validate_cases([good, bad])
    with pytest.warns(UserWarning, match=r"skipping case: .*_flair\.nii\.gz: missing"):
        assert validate_cases([good, bad], skip_bad_cases=True) == [good]
    with pytest.warns(UserWarning):
        assert [c.case_id for c in load_cases([good, bad], skip_bad_cases=True)] == [good.name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CaseError, match="no usable cases"):
            validate_cases([bad], skip_bad_cases=True)


# -- preprocessing -------------------------------------------------------------------

def test_preprocess_zscore_crop_uncrop(case):
    pre = preprocess_case(case)
    brain = np.any(case.image != 0, axis=0)
    assert pre.brain_mask.sum() == brain.sum()  # the crop loses no brain voxel
    inside = pre.image[:, pre.brain_mask]
    np.testing.assert_allclose(inside.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(inside.std(axis=1), 1, atol=1e-3)
    assert np.all(pre.image[:, ~pre.brain_mask] == 0)
    # the box is tight: every face touches the brain
    for axis in range(3):
        assert pre.brain_mask.take(0, axis=axis).any() and pre.brain_mask.take(-1, axis=axis).any()
    np.testing.assert_array_equal(uncrop(pre.label, pre.bbox, pre.full_shape), case.label)
    restored = uncrop(pre.image, pre.bbox, pre.full_shape)
    assert restored.shape == case.image.shape and np.all(restored[:, ~brain] == 0)
    with pytest.raises(ValueError, match="shape"):
        uncrop(pre.label[:-1], pre.bbox, pre.full_shape)


# -- cache ---------------------------------------------------------------------------

def test_cache_hit_and_never_stale(tmp_path, case_dir):
    cache = PreprocessedCache(tmp_path / "cache")
    first = cache.load(case_dir)
    assert isinstance(first.image, np.memmap)
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1
    again = cache.load(case_dir)
    np.testing.assert_array_equal(again.image, first.image)
    assert again.bbox == first.bbox and again.full_shape == first.full_shape
    assert len(list((tmp_path / "cache").iterdir())) == 1  # served from the cache
    # change an input: a new entry with the new content, not the stale one
    flair = _file(case_dir, "_flair.nii.gz")
    data = np.asanyarray(nib.load(str(flair)).dataobj).copy()
    data[..., : SHAPE[0] // 2] *= 2  # z-scoring is shift/scale invariant: change only half
    _rewrite(flair, data)
    st = flair.stat()
    os.utime(flair, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = cache.load(case_dir)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert not np.array_equal(changed.image[0], first.image[0])
    # a different setting is a different entry too
    cache.load(case_dir, with_label=False)
    assert len(list((tmp_path / "cache").iterdir())) == 3


def test_cache_derived_arrays(tmp_path, case_dir):
    cache = PreprocessedCache(tmp_path / "cache")
    cache.load(case_dir)
    calls = []
    make = lambda: calls.append(1) or np.arange(5)  # noqa: E731
    np.testing.assert_array_equal(cache.derived(case_dir, "region", make), np.arange(5))
    np.testing.assert_array_equal(cache.derived(case_dir, "region", make), np.arange(5))
    assert calls == [1]


def test_kfold_split():
    items = [f"c{i:02d}" for i in range(10)]
    held = []
    for k in range(5):
        train, test = kfold_split(items, 5, k, seed=1)
        assert not set(train) & set(test) and sorted(train + test) == items
        held += test
    assert sorted(held) == items  # every case held out exactly once
    assert kfold_split(items, 5, 2, seed=1) == kfold_split(list(reversed(items)), 5, 2, seed=1)
    with pytest.raises(ValueError, match="--fold"):
        kfold_split(items, 5, 5)


# -- real data -----------------------------------------------------------------------

def test_real_2018_case(sample_data):
    folder = find_cases(sample_data)[0]
    case = load_case(folder)
    assert case.convention == "2018" and case.image.shape == (4, 155, 240, 240)
    assert case.spacing == (1.0, 1.0, 1.0)
    assert set(np.unique(case.label).tolist()) <= {0, 1, 2, 3, 4}
    assert (case.label == ENHANCING).any()
    pre = preprocess_case(case)
    assert pre.image.shape[1:] == pre.label.shape and pre.image.shape[1] <= 155


def test_real_2023_naming(sample_2023):
    folder = find_cases(sample_2023)[0]
    case = load_case(folder, with_label=False)
    assert case.naming == "2023" and case.convention == "2023"
    assert case.case_id == folder.name and case.image.shape == (4, 155, 240, 240)
    assert set(case.paths) == {"flair", "t1", "t1c", "t2"}
    assert case.paths["flair"].name.endswith("-t2f.nii.gz")


def test_cache_does_not_skip_a_stricter_validation(tmp_path, case_dir):
    path = _file(case_dir, "_t2.nii.gz")
    affine = nib.load(str(path)).affine.copy()
    affine[1, 3] += 1e-4  # inside the default tolerance, outside a strict one
    _rewrite(path, affine=affine)
    cache = PreprocessedCache(tmp_path / "cache")
    cache.load(case_dir)
    with pytest.raises(CaseError, match="affine differs"):
        cache.load(case_dir, affine_tolerance=1e-6)
