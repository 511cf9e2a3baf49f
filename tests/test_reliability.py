"""Reliability and safety of everything omkit reads and writes: files are
loaded without running code, temporaries stranded by a kill are cleaned,
corrupt cache entries are rebuilt, run folders are locked and replaced only
when omkit made them, bad cases and bad numbers are one-line errors."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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
        live.wait()
    assert len(clean_stale_temporaries(target.parent)) == 1  # now it is stranded too
    atomic_write_text(target.parent / "a.txt", "x")
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_an_atomic_write_removes_the_stale_temporaries_of_its_target(tmp_path):
    stale = tmp_path / ".last.pt.abcd1234.tmp.pt"  # as left by a killed writer of an older omkit
    stale.write_bytes(b"x")
    other = tmp_path / ".model.pt.abcd1234.tmp.pt"
    other.write_bytes(b"x")
    with atomic_path(tmp_path / "last.pt") as tmp:
        tmp.write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.pt.abcd1234.tmp.pt", "last.pt"]
    assert not is_temporary("notes.txt") and not is_temporary(".hidden")
