"""omkit selftest (every op of the manifest against its reference on the user's device
and dtypes) and what omkit info says about the compiled library."""
from __future__ import annotations

import json

import pytest
import torch

from omkit import ops
from omkit.cli import main as cli_main
from omkit.ops import _library, manifest, selftest

needs_extension = pytest.mark.skipif(not ops.extension_loaded(), reason=f"compiled ops not built: {ops.load_error()}")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and "cuda" in _library.STATE.kernels.get("cga", ()) else [])


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
def test_selftest_passes_every_op_in_every_kernel_dtype(device):
    rows = selftest.run(device)
    dtypes = selftest.kernel_dtypes(device)
    assert {(r.op, r.dtype) for r in rows if not r.dtype.startswith("autocast")} == {
        (op.name, str(d).removeprefix("torch.")) for op in manifest.OPS for d in dtypes}
    assert all(r.status == "pass" and r.path == "kernel" for r in rows), selftest.format_table(rows)
    autocast = {(r.op, r.dtype) for r in rows if r.dtype.startswith("autocast")}
    assert autocast == {(op.name, f"autocast {str(d).removeprefix('torch.')}") for op in manifest.OPS
                        if op.backward_of is None and op.autocast == "lower" for d in dtypes if d in selftest.HALF}


@needs_extension
def test_selftest_cli_prints_the_table(capsys):
    assert cli_main(["selftest", "--device", "cpu", "--dtype", "float32", "--dtype", "float16"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("omkit selftest: device cpu")
    assert lines[1].split() == ["op", "dtype", "path", "max", "error", "tolerance", "ms", "result"]
    assert any(line.startswith("cga ") and line.endswith("pass") for line in lines)
    assert "does not take float16" in out  # the CPU kernels' fallback is a skip with its reason
    autocast_checked = sum(op.backward_of is None and op.autocast == "lower" for op in manifest.OPS)  # float16 only
    assert lines[-1].startswith(f"{2 * len(manifest.OPS) + autocast_checked} checks: ") and "0 failed" in lines[-1]


@needs_extension
def test_selftest_fails_with_exit_status_1_when_a_kernel_disagrees(monkeypatch, capsys):
    wrong = ops.reference.cga_pool
    monkeypatch.setattr(ops.reference, "cga_pool", lambda *a: tuple(1.5 * t for t in wrong(*a)))
    assert cli_main(["selftest", "--device", "cpu", "--dtype", "float32", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    failed = {c["op"] for c in report["checks"] if c["status"] == "fail"}
    assert "cga_pool" in failed and not report["ok"]


def test_selftest_without_the_extension_skips_with_the_reason(monkeypatch, capsys):
    monkeypatch.setattr(_library.STATE, "loaded", False)
    monkeypatch.setattr(_library.STATE, "load_error", "omkit.ops._C is not built (test)")
    assert cli_main(["selftest", "--device", "cpu", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "compiled ops not loaded: omkit.ops._C is not built (test)" in out
    assert out.count("skip: omkit.ops._C is not built (test)") == len(manifest.OPS)


@needs_extension
def test_build_info_records_what_the_library_was_built_with():
    info = ops.build_info()
    assert info["torch"] == torch.__version__.split("+")[0]
    assert info["cuda"] == ("cuda" in _library.STATE.kernels["cga"])
    assert isinstance(info["cuda_archs"], list) and (info["cuda_archs"] or not info["cuda"])


def test_cuda_arch_runs():
    runs = _library.cuda_arch_runs
    assert runs(["sm_90"], (9, 0)) and not runs(["sm_90"], (8, 0)) and not runs(["sm_80"], (9, 0))
    assert runs(["sm_80"], (8, 6))  # same major, newer minor: the cubin runs
    assert runs(["sm_80", "compute_80"], (9, 0))  # PTX is compiled for the newer GPU
    assert not runs(["compute_90"], (8, 0)) and runs(["sm_90a"], (9, 0)) and not runs([], (9, 0))


def test_info_says_why_and_what(capsys):
    assert cli_main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    ext = info["extension"]
    assert ext["loaded"] == ops.extension_loaded() and ext["why_not"] == ops.load_error()
    assert ext["kernel_dtypes"]["cpu"] == sorted(manifest.CGA_DTYPES["cpu"])
    assert "cudnn" in info and "cuda" in info and isinstance(ext["fallbacks"], list)
    if ops.extension_loaded():
        assert ext["built_for_torch"] == torch.__version__.split("+")[0]
