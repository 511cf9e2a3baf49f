"""What the reliability suites share: a payload that must never run, running omkit
in this process or a new one, the one-line error check, the synthetic cases and
the tiny model they read."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


class Evil:
    """Unpickling this runs ``touch <flag>``: a crafted file must never get that far."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def omkit_env(**extra) -> dict:
    """This environment, with this checkout first on the path and one thread per process."""
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", **extra}


def run_omkit(*argv, env=None, preexec_fn=None, timeout=300) -> subprocess.CompletedProcess:
    """``python -m omkit ARGV`` in a new process."""
    return subprocess.run([sys.executable, "-m", "omkit", *map(str, argv)], capture_output=True, text=True,
                          env=env or omkit_env(), preexec_fn=preexec_fn, timeout=timeout)


def cli(*argv) -> subprocess.CompletedProcess:
    """``omkit ARGV`` in this process: its stderr and exit status."""
    from omkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main([*map(str, argv)])
        except SystemExit as exc:  # argparse
            code = exc.code
    return subprocess.CompletedProcess(["omkit", *map(str, argv)], code, out.getvalue(), err.getvalue())


def one_line_error(result, *needles: str, code: int = 2) -> str:
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


TINY_TRAIN = ["--width", "0.125", "--patch-size", "8,16,16", "--batch-per-task", "2", "--patches-per-epoch", "4,4,2",
              "--stage-epochs", "1,1,1", "--no-progress", "--device", "cpu", "--threads", "1"]


FAST_TILES = ["--tile-size", "8,16,16", "--tile-keep", "8,16,16", "--no-progress", "--device", "cpu"]


def limited_file_size(limit: int):
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


