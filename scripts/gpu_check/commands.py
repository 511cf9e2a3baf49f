"""Step 6: the command line on the GPU: train, predict on real cases, evaluate."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .core import Check, REPO, Step, size_mib, tail

# -- 6. the command line --------------------------------------------------------------------------

def _case_folders(root: Path | None) -> list[Path]:
    if root is None or not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and any(f.name.endswith((".nii", ".nii.gz"))
                                                                  for f in p.iterdir()))


def data_folder(check: Check) -> tuple[Path | None, str]:
    """The folder of real cases the CLI and benchmarks use, and what it is."""
    for root in [check.data] if check.data else [REPO / "gpu_data", REPO.parent / "shared" / "data" /
                                                 "brats2018-sample"]:
        if root is None:
            continue
        candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        for folder in candidates:
            cases = _case_folders(folder)
            if cases:
                return folder, f"{len(cases)} real cases in {folder} ({size_mib(folder):.1f} MiB)"
    return None, "no real cases"


def step_cli(check: Check, result: Step, log: Path, limit: float) -> None:
    step_began = time.monotonic()
    work = check.out / "cli"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    omkit = [check.python, "-m", "omkit"]
    gpu = not check.dry and check.env.get("cuda_available")
    data, kind = data_folder(check) if gpu else (None, "synthetic (dry run)")
    if data is not None:  # two real cases: train on them for a minute, predict and score them
        cases = _case_folders(data)[:2]
        data = work / "cases"
        data.mkdir()
        for case in cases:
            (data / case.name).symlink_to(case, target_is_directory=True)
        kind = f"{len(cases)} real cases ({', '.join(c.name for c in cases)}, {sum(size_mib(c) for c in cases):.1f} MiB)"
    if data is None:
        data = work / "data"
        rc, out = check.py(f"from omkit.data import synthetic; synthetic.make_dataset({str(data)!r}, num_cases=3, "
                           f"shape={(32, 64, 64) if gpu else (16, 32, 32)}, seed=5)", log, 120)
        if rc != 0:
            result.status, result.why = "fail", f"could not write synthetic cases: {tail(out, 1)}"
            return
        kind = "synthetic cases" if gpu else kind
    if gpu:
        precision = "fp16"
        train = ["--recipe", "cpu-budget", "--device", "cuda", "--precision", precision, "--max-minutes", "0.5"]
        predict = ["--device", "cuda", "--precision", precision]
    else:  # bf16 training on a CPU runs without oneDNN (omkit.devices.convolution_guard): slow; the tests cover it
        precision = "bf16 (predict; train fp32)"
        train = ["--device", "cpu", "--precision", "fp32", "--max-steps", "2", "--width", "0.125", "--patch-size",
                 "8,16,16", "--batch-per-task", "2", "--stage-epochs", "0,0,1", "--patches-per-epoch", "4"]
        predict = ["--device", "cpu", "--precision", "bf16", "--tile-size", "8,16,16", "--tile-keep", "4,8,8"]
    run_dir, pred, evaluation = work / "run", work / "pred", work / "eval"
    # a GPU predicts the (two) real cases; a dry run one synthetic case
    targets = data if gpu else sorted(p for p in data.iterdir() if p.is_dir())[0]
    rows = []
    commands = [
        ("train", omkit + ["train", "-i", str(data), "-o", str(run_dir), "--cache-dir", str(work / "cache"),
                           "--no-progress", *train]),
        ("predict", omkit + ["predict", "-i", str(targets), "-o", str(pred), "-m", str(run_dir / "model.pt"),
                             "--no-progress", *predict]),
        ("evaluate", omkit + ["evaluate", "-i", str(pred), "--gt", str(data), "-o", str(evaluation)]),
    ]
    for name, cmd in commands:
        began = time.monotonic()
        rc, out = check.run(cmd, log, max(5.0, limit - (began - step_began)))
        said = [line for line in out.splitlines() if line.strip() and "warning" not in line.lower()]
        rows.append((name, rc, time.monotonic() - began, said[-1] if said else ""))
        if rc != 0:
            break
    table = "| command | exit | seconds | last line |\n|---|---|---|---|\n" + "".join(
        f"| omkit {n} | {'timeout' if rc is None else rc} | {s:.1f} | {w[:150]} |\n" for n, rc, s, w in rows)
    summary = evaluation / "summary.json"
    dice = ""
    if summary.exists():
        regions = json.loads(summary.read_text()).get("regions", {})
        means = " / ".join(f"{r} {v.get('dice', {}).get('mean', float('nan')):.3f}" for r, v in regions.items())
        dice = (f"\nMean Dice ({means}) from `cli/eval/summary.json`: a model trained for a minute, a check that "
                "the path runs, not a score.\n")
    result.details = f"Data: {kind}; precision {precision}.\n\n{table}{dice}"
    failed = [n for n, rc, _, _ in rows if rc != 0]
    if failed:
        result.status, result.why = "fail", f"omkit {failed[0]} failed"
    else:
        result.status = "pass"
        result.why = f"train, predict, evaluate on {kind}, {'cuda' if gpu else 'cpu'}, {precision}"
