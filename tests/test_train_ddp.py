"""DDP: ``torchrun --nproc_per_node=2 -m omkit train`` on CPU (gloo)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from omkit.checkpoint import load_model
from omkit.data import synthetic
from omkit.training import weights_digest


def _two_process_training(tmp_path, seed: int, *options: str) -> list[str]:
    """The torchrun command of a tiny two-process CPU run into ``tmp_path / "run"``, on new synthetic data."""
    synthetic.make_dataset(tmp_path / "data", num_cases=2, shape=(16, 32, 32), seed=seed)
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "omkit", "train", "--preset", "omnet_cga", "-i", str(tmp_path / "data"), "-o", str(tmp_path / "run"),
        "--device", "cpu", "--width", "0.125", "--patch-size", "8,16,16", "--batch-per-task", "2",
        "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--threads", "1", *options,
    ]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with the gloo backend is not available")
def test_two_process_training_keeps_weights_identical(tmp_path):
    run = tmp_path / "run"
    command = _two_process_training(tmp_path, 50, "--stage-epochs", "1,1,1", "--patches-per-epoch", "8",
                                    "--max-minutes", "30")  # the main process's stop decision shared with the other
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["finished"]
    # 8 patches per task and epoch over 2 processes x 2 per step: 2 steps per epoch
    assert metrics["steps"] == 6
    ranks = metrics["processes"]
    assert len(ranks) == 2
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"] and metrics["weights_identical"]
    assert ranks[0]["patch_pool_sha256"] != ranks[1]["patch_pool_sha256"]  # each rank its own patches
    model, meta = load_model(run / "model.pt")
    assert weights_digest(model) == ranks[0]["weights_sha256"]
    # only rank 0 wrote: one set of outputs, no temporary files left behind
    assert sorted(p.name for p in run.iterdir()) == [
        ".omkit-lock", ".omkit-run", "checkpoints", "config.json", "loss_curve.png", "metrics.csv", "metrics.json",
        "model.pt"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    # every process's RNG states, as plain tensors and numbers (loadable weights-only)
    per_rank = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["rng"]["per_rank"]
    assert len(per_rank) == 2 and not torch.equal(per_rank[0]["torch"], per_rank[1]["torch"])


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available()
                    or os.name != "posix", reason="torch.distributed with gloo, POSIX signals")
def test_a_signal_to_one_process_stops_every_process_at_the_same_step(tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    command = _two_process_training(tmp_path, 51, "--stage-epochs", "0,0,1", "--patches-per-epoch", "40000",
                                    "--checkpoint-every", "100000")
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 240
        while not (run / "config.json").is_file():  # after the first step
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[1][-3000:]
            time.sleep(0.1)
        time.sleep(0.5)
        workers = subprocess.run(["pgrep", "-f", "--", f"-o {run}"], capture_output=True, text=True).stdout.split()
        workers = [int(p) for p in workers if int(p) != launcher.pid]
        assert len(workers) == 2, workers
        os.kill(max(workers), signal.SIGTERM)  # one worker only (the later one started)
        _, err = launcher.communicate(timeout=240)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    # the workers exit 75 (torchrun reports it as a failed worker: a job script requeues on the
    # checkpoint, not on torchrun's code); no process hung in a collective the other left
    assert "exitcode  : 75" in err or "exit 75" in err, err[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped_by"].startswith("signal") and not metrics["finished"]
    assert metrics["weights_identical"]  # both processes stopped after the same step
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert saved["state"]["global_step"] == metrics["steps"]
