"""Multi-node training: two torchrun launchers (``--nnodes 2``, c10d rendezvous on localhost,
gloo), two processes each, stand for two nodes. Weights stay identical on all four ranks,
only global rank 0 writes, a two-node run resumed on two nodes is bit-exact against one
never interrupted, and a run resumes on one node.

Resuming on another node count cannot be bit-exact: the global batch is the processes
times ``--batch-per-task``, and each process draws its patches from its own stream, so
the steps after the checkpoint see other patches. What the one-node resume checks
instead: it starts from the checkpoint (its step count goes on from it, its weights move
on from the checkpoint's), says in a warning that it is not bit-exact, keeps its two ranks identical and
finishes the budget."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import torch

from omkit.checkpoint import load_model
from omkit.data import synthetic
from omkit.training import weights_digest

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                       reason="torch.distributed with the gloo backend is not available"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rendezvous_store():
    """``(port, store)``: the c10d rendezvous store, served by this process so that it outlives
    both launchers (a launcher that hosts it may exit while the other still reads it); the
    launchers join it with ``is_host=false``."""
    port = free_port()
    return port, torch.distributed.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)


def rendezvous_flags(nodes: int, port: int) -> list[str]:
    return ["--nnodes", str(nodes), "--nproc_per_node", "2", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"omkit-{port}", "--rdzv-conf", "is_host=false"]


# What the C++ runtime prints when a worker aborts as it exits. Seen on a loaded 2-core machine in
# about 1 of 10 runs of the two-node test. A core dump shows the cause: at interpreter exit, gloo's
# worker thread (ProcessGroupGloo::runLoop) destroys a finished all-gather whose tensors are Python
# objects; taking the GIL during finalization ends that thread with a forced unwind through a
# noexcept frame, so std::terminate. The run's outputs are written by then, but the launcher fails,
# and the other launcher's ranks wait for it in gloo. A launch that ends so runs again once, from
# the state it started in, with a warning; any other failure fails.
TORCH_ABORT = "terminate called without an active exception"


def launch_retrying(command_for_port, count: int, outputs_of: Path) -> list[tuple[int, str, str]]:
    """``count`` launchers of ``command_for_port(port)`` on a fresh rendezvous; once more (with
    ``outputs_of`` put back as it was) when a worker aborted inside torch (:data:`TORCH_ABORT`)."""
    with tempfile.TemporaryDirectory() as kept:
        before = Path(kept) / "before"
        if outputs_of.exists():
            shutil.copytree(outputs_of, before)
        for attempt in (1, 2):
            port, store = rendezvous_store()
            try:
                outputs = launch(command_for_port(port), count)
            finally:
                del store
            aborted = any(code != 0 for code, _, _ in outputs) and any(TORCH_ABORT in err for _, _, err in outputs)
            if not aborted or attempt == 2:
                return outputs
            warnings.warn(f"a worker aborted inside torch ({TORCH_ABORT!r}); the launch runs again once")
            shutil.rmtree(outputs_of, ignore_errors=True)
            if before.exists():
                shutil.copytree(before, outputs_of)
    raise AssertionError("unreachable")


def train_on_nodes(nodes: int, data: Path, run: Path, cache: Path, max_steps: int, *options: str) -> list[str]:
    """``nodes`` torchrun launchers of two processes each, joined by a c10d rendezvous; their stderr."""
    def command(port: int) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", *rendezvous_flags(nodes, port), "-m", "omkit", "train",
                "--preset", "omnet_cga", "-i", str(data), "-o", str(run), "--device", "cpu",
                "--width", "0.125", "--patch-size", "8,16,16", "--batch-per-task", "1", "--cache-dir", str(cache),
                "--stage-epochs", "0,0,1", "--patches-per-epoch", "40000", "--max-steps", str(max_steps),
                "--checkpoint-every", "2", "--no-progress", "--threads", "1", *options]

    outputs = launch_retrying(command, nodes, run)
    for returncode, _, err in outputs:
        assert returncode == 0, err[-3000:]
    return [err for _, _, err in outputs]


def launch(command: list[str], count: int, timeout: float = 300) -> list[tuple[int, str, str]]:
    """``count`` copies of ``command`` at once; each one's ``(returncode, stdout, stderr)``. Output
    goes to files, not pipes, so that no launcher blocks on a full pipe while another is waited
    for; when one fails, the others are stopped (they would wait for it in gloo for half an hour)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    files = [(tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in range(count)]
    launchers = [subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env) for out, err in files]
    deadline = time.monotonic() + timeout
    try:
        while True:
            codes = [launcher.poll() for launcher in launchers]  # every one, each time (not any()'s first)
            if None not in codes or any(code not in (None, 0) for code in codes) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                # SIGTERM: torchrun stops its workers (each in a session of its own) before it exits; a
                # worker left behind would wait in gloo and hold the run folder's lock against the next launch
                launcher.terminate()
                try:
                    launcher.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    launcher.kill()
                    launcher.wait()
    results = []
    for launcher, (out, err) in zip(launchers, files):
        out.seek(0), err.seek(0)
        results.append((launcher.returncode, out.read(), err.read()))
        out.close(), err.close()
    assert time.monotonic() <= deadline, f"the launchers ran past {timeout:.0f} s: " + \
        " | ".join(err[-1500:] for _, _, err in results)
    return results


def finished(run: Path, world_size: int, steps: int) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == world_size and metrics["steps"] == steps, metrics
    assert metrics["stopped_by"].startswith("max_steps") or metrics["stopped_by"] == "finished", metrics["stopped_by"]
    digests = {rank["weights_sha256"] for rank in metrics["processes"]}
    assert len(metrics["processes"]) == world_size and len(digests) == 1 and metrics["weights_identical"]
    model, _ = load_model(run / "model.pt")
    assert weights_digest(model) == digests.pop()
    return metrics


def test_two_nodes_train_identically_and_resume_on_one(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    synthetic.make_dataset(data, num_cases=2, shape=(16, 32, 32), seed=52)

    # two nodes, four ranks: identical weights, one set of outputs (global rank 0's)
    train_on_nodes(2, data, tmp_path / "run", cache, 4)
    finished(tmp_path / "run", 4, 4)
    written = {p.name for p in (tmp_path / "run").iterdir()}
    assert {".omkit-lock", ".omkit-run", "checkpoints", "config.json", "metrics.json", "model.pt"} <= written <= {
        ".omkit-lock", ".omkit-run", "checkpoints", "config.json", "loss_curve.png", "metrics.csv", "metrics.json",
        "model.pt"}
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["world_size"] == 4 and len(checkpoint["rng"]["per_rank"]) == 4
    shutil.copytree(tmp_path / "run", tmp_path / "two")

    # resumed on two nodes: bit-exact against a two-node run never interrupted
    train_on_nodes(2, data, tmp_path / "two", cache, 6, "--resume", "auto")
    train_on_nodes(2, data, tmp_path / "straight", cache, 6)
    assert finished(tmp_path / "two", 4, 6)["processes"][0]["weights_sha256"] == \
        finished(tmp_path / "straight", 4, 6)["processes"][0]["weights_sha256"]

    # resumed on one node (two ranks): from the checkpoint, said not to be bit-exact
    (err,) = train_on_nodes(1, data, tmp_path / "run", cache, 6, "--resume", "auto")
    assert "saved with 4 processes, resumed with 2" in err
    finished(tmp_path / "run", 2, 6)
    resumed = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["world_size"] == 2 and resumed["state"]["global_step"] == 6
    moved = [k for k, v in resumed["model"].items() if v.is_floating_point() and not torch.equal(v, checkpoint["model"][k])]
    assert moved  # trained on from the checkpoint's weights


def test_two_nodes_predict_each_case_once(tmp_path):
    """``omkit predict`` across two launchers: the shared queue (claims named by the rendezvous
    id, the same on every node) hands each case to exactly one of the four processes."""
    from omkit.checkpoint import save_model
    import omkit

    synthetic.make_dataset(tmp_path / "data", num_cases=6, shape=(16, 32, 32), seed=53)
    torch.manual_seed(0)
    model = save_model(omkit.create_model("omnet_cga", width=0.125), tmp_path / "model.pt", patch_size=(8, 16, 16))
    out = tmp_path / "out"

    def command(port: int) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", *rendezvous_flags(2, port), "-m", "omkit", "predict",
                "-i", str(tmp_path / "data"), "-o", str(out), "-m", str(model), "--no-progress", "--device", "cpu"]

    outputs = launch_retrying(command, 2, out)
    assert all(returncode == 0 for returncode, _, _ in outputs), [err[-2000:] for _, _, err in outputs]
    summary = "".join(stdout for _, stdout, _ in outputs)
    assert summary.count("wrote 6 case(s)") == 1 and "(4 processes: " in summary, summary
    counts = summary.split("(4 processes: ")[1].split(")")[0].split(" + ")
    assert sum(map(int, counts)) == 6  # each case written by exactly one process
    assert sorted(p.name for p in out.iterdir()) == [f"Synth18_{i:03d}.nii.gz" for i in range(6)]


def test_the_launch_helper_stops_the_others_and_retries_only_a_torch_abort(tmp_path):
    """The helpers above: a failing launcher stops the others at once; a launch that ends with
    torch's abort runs again from the state it started in; any other failure is returned as it is."""
    # of two copies, the first to take the lock sleeps a minute, the other fails at once
    one_sleeps = ("import os, sys, time\n"
                  "try:\n    os.close(os.open(sys.argv[1], os.O_CREAT | os.O_EXCL))\n"
                  "except FileExistsError:\n    sys.exit(3)\n"
                  "time.sleep(60)\n")
    start = time.monotonic()
    outputs = launch([sys.executable, "-c", one_sleeps, str(tmp_path / "lock")], 2, timeout=120)
    assert time.monotonic() - start < 30
    assert sorted(code for code, _, _ in outputs) == [-15, 3]  # stopped with SIGTERM (torchrun then stops its workers)

    script = ("import pathlib, sys\n"
              "marker, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n"
              "(out / 'written').write_text('x')\n"
              "if sys.argv[3] == 'abort' and not marker.exists():\n"
              "    marker.write_text('1'); sys.stderr.write(sys.argv[4]); sys.exit(134)\n"
              "if sys.argv[3] == 'fail': sys.exit(3)\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept").write_text("before")

    def command(mode: str):
        return lambda port: [sys.executable, "-c", script, str(tmp_path / "marker"), str(out), mode, TORCH_ABORT]

    with pytest.warns(UserWarning, match="a worker aborted inside torch"):
        outputs = launch_retrying(command("abort"), 2, out)
    assert [code for code, _, _ in outputs] == [0, 0]
    assert (out / "kept").read_text() == "before" and (out / "written").exists()
    outputs = launch_retrying(command("fail"), 2, out)
    assert [code for code, _, _ in outputs] == [3, 3]
