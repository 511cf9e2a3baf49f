"""Atomic outputs: never half-written, never overwritten without force."""
from __future__ import annotations

import os

import pytest

from omkit.fileio import OutputExistsError, atomic_path, atomic_write_text


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out" / "case.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.name.endswith(".nii.gz") and tmp.parent == target.parent
            tmp.write_bytes(b"partial")
            raise RuntimeError("writer crashed")
    assert list(target.parent.iterdir()) == []


def test_existing_output_needs_force(tmp_path):
    target = atomic_write_text(tmp_path / "summary.json", "first")
    with pytest.raises(OutputExistsError, match=r"summary.json: exists; pass --force"):
        atomic_write_text(target, "second", force=False)
    assert target.read_text() == "first"
    atomic_write_text(target, "second", force=True)
    assert target.read_text() == "second"


def test_outputs_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        target = atomic_write_text(tmp_path / "metrics.csv", "a,b\n")
    finally:
        os.umask(old)
    assert os.stat(target).st_mode & 0o777 == 0o644
