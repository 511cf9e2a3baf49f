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
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1", **extra)


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
