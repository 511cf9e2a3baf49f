"""Preemption: SIGTERM mid-run ends the step, writes the checkpoint and exits 75; the
same command with ``--resume auto`` continues it, bit-exactly against a run never
interrupted; ``--resume auto`` on a fresh folder starts the run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from omkit.data import synthetic

from conftest import cli_in_process
from omkit.training.preemption import EXIT_REQUEUE, StopSignals


def _args(data, run, cache, steps):
    return ["train", "--preset", "omnet_cga", "-i", str(data), "-o", str(run), "--width", "0.125",
            "--patch-size", "8,16,16", "--stage-epochs", "0,0,1", "--patches-per-epoch", "4000",
            "--batch-per-task", "2", "--max-steps", str(steps), "--checkpoint-every", "100000",
            "--cache-dir", str(cache), "--seed", "3", "--threads", "1", "--device", "cpu", "--no-progress"]


def _weights(run):
    return torch.load(run / "model.pt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_checkpoints_exits_75_and_resume_auto_continues_bit_exactly(tmp_path, capsys):
    data, cache = tmp_path / "data", tmp_path / "cache"
    synthetic.make_dataset(data, num_cases=2, shape=(16, 32, 32), seed=11)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "omkit", *_args(data, run, cache, 10**6)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while not (run / "config.json").is_file():  # written after the first step
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the run never made its first step"
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_REQUEUE, err
    assert "stopped by SIGTERM after step" in err and "--resume auto" in err
    stopped = json.loads((run / "metrics.json").read_text())
    assert stopped["stopped_by"] == "signal SIGTERM"
    step = int(stopped["steps"])
    assert 1 <= step < 10**6
    # the same command, now with --resume auto and a budget a few steps on, continues it
    code, out = cli_in_process(_args(data, run, cache, step + 3) + ["--resume", "auto"], capsys)
    assert code == 0, out.err
    assert json.loads((run / "metrics.json").read_text())["steps"] == step + 3
    reference = tmp_path / "reference"
    code, out = cli_in_process(_args(data, reference, cache, step + 3), capsys)
    assert code == 0, out.err
    a, b = _weights(run), _weights(reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_auto_starts_a_fresh_run_and_keeps_a_finished_one(tmp_path, capsys):
    data, cache = tmp_path / "data", tmp_path / "cache"
    synthetic.make_dataset(data, num_cases=2, shape=(16, 32, 32), seed=12)
    run = tmp_path / "run"
    code, out = cli_in_process(_args(data, run, cache, 2) + ["--resume", "auto"], capsys)
    assert code == 0, out.err
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2
    before = (run / "model.pt").read_bytes()
    code, out = cli_in_process(_args(data, run, cache, 2) + ["--resume", "auto"], capsys)
    assert code == 0, out.err
    assert (run / "model.pt").read_bytes() == before  # nothing trained or rewritten
    with pytest.raises(SystemExit) as info:
        cli_in_process(_args(data, tmp_path / "other", cache, 2) + ["--resume", "sometimes"], capsys)
    assert info.value.code == 2 and "argument --resume: invalid choice: 'sometimes'" in capsys.readouterr().err


def test_stop_signals_put_back_the_handlers_they_replaced():
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda *a: seen.append("mine"))
    try:
        with StopSignals() as signals:
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.05)
            assert signals.received == "SIGUSR1" and not seen
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert seen == ["mine"]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_file_system_without_locks_is_said_in_one_warning(tmp_path, monkeypatch):
    import errno

    from omkit.training import run_folder

    if run_folder.fcntl is None:
        pytest.skip("no fcntl on this platform")

    def refuse(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_folder.fcntl, "flock", refuse)
    (tmp_path / "run").mkdir()
    with pytest.warns(UserWarning, match="the file system refuses locks .*No locks available.*run one job per folder"):
        lock = run_folder.RunLock(tmp_path / "run").acquire()
    lock.release()
