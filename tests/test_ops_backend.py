"""Choosing between compiled ops and references: forcing, warn-once fallback,
backend_report / omkit info."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from omkit import functional as OF
from omkit import ops
from omkit.ops import _library, manifest

OP_NAMES = {op.name for op in manifest.OPS}


def _inputs():
    features = torch.randn(2, 4, 2, 3, 3, dtype=torch.float64)
    guidance = torch.rand(2, 1, 2, 3, 3, dtype=torch.float64)
    w = [torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)] * 2
    return features, guidance, w


def test_backend_report_names_every_op():
    report = ops.backend_report()
    assert set(report) == OP_NAMES
    expected = "reference" if not ops.extension_loaded() or ops.get_backend() == "reference" else (
        "cuda-kernel" if torch.cuda.is_available() and "cuda" in _library.STATE.kernels["cga_pool"] else "cpu-kernel")
    assert report["cga_pool"] == expected
    with ops.use_backend("reference"):
        assert set(ops.backend_report().values()) == {"reference"}


def test_omkit_info_reports_op_backends():
    from omkit.cli.info import op_backends

    assert op_backends() == ops.backend_report()


def test_forced_reference_matches_kernel():
    features, guidance, w = _inputs()
    with ops.use_backend("reference"):
        ref = OF.cga(features, guidance, *w)
        ref_m = ops.cga_pool(features, guidance)[0]
    torch.testing.assert_close(ref, OF.cga_reference(features, guidance, *w))
    if ops.extension_loaded():
        with ops.use_backend("kernel"):
            torch.testing.assert_close(OF.cga(features, guidance, *w), ref)
            torch.testing.assert_close(ops.cga_pool(features, guidance)[0], ref_m)


def test_unknown_backend_rejected():
    with pytest.raises(ValueError, match="unknown omkit ops backend"):
        ops.set_backend("fast")


def test_missing_extension_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setattr(_library.STATE, "loaded", False)
    monkeypatch.setattr(_library.STATE, "load_error", "omkit.ops._C is not built (test)")
    monkeypatch.setattr(_library.STATE, "warned", set())
    monkeypatch.setattr(_library.STATE, "backend", "auto")
    features, guidance, w = _inputs()
    with pytest.warns(RuntimeWarning, match="not built"):
        out = OF.cga(features, guidance, *w)
    torch.testing.assert_close(out, OF.cga_reference(features, guidance, *w))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second fallback is silent
        OF.category_importance(features, guidance)
        ops.gather_tiles(torch.zeros(1, 3, 3, 3), torch.zeros(1, 3, dtype=torch.long), (2, 2, 2))
    assert set(ops.backend_report().values()) == {"reference"}
    monkeypatch.setattr(_library.STATE, "backend", "kernel")
    with pytest.raises(RuntimeError, match="OMKIT_OPS_BACKEND=kernel but omkit.ops._C is not built"):
        OF.cga(features, guidance, *w)


def test_reference_tile_fallback_matches_kernel():
    origins = torch.tensor([[-1, 0, 2], [1, 1, 1]])
    volume = torch.randn(2, 4, 5, 6)
    with ops.use_backend("reference"):
        ref = ops.gather_tiles(volume, origins, (3, 3, 3))
        ref_out = ops.stitch_tiles(torch.zeros(2, 4, 5, 6), ref, origins, (1, 1, 1), (1, 1, 1))
    assert torch.equal(ops.gather_tiles(volume, origins, (3, 3, 3)), ref)
    assert torch.equal(ops.stitch_tiles(torch.zeros(2, 4, 5, 6), ref, origins, (1, 1, 1), (1, 1, 1)), ref_out)


@pytest.mark.parametrize("value,expect", [("reference", "reference"), ("bogus", "error")])
def test_environment_variable_selects_backend(value, expect):
    code = "import omkit.ops as o; print(sorted(set(o.backend_report().values())))"
    env = dict(os.environ, OMKIT_OPS_BACKEND=value)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if expect == "error":
        assert proc.returncode != 0 and "OMKIT_OPS_BACKEND='bogus'" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "['reference']"
