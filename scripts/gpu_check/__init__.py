"""The GPU acceptance run of omkit: one command (``make gpu-check``) for a machine
with an NVIDIA GPU that builds the CUDA kernels for that GPU and runs every check
that needs one, in a few minutes, writing what it finds into one folder.

    python3 scripts/gpu_check [OUT] [--dry-run] [--budget-s 470] [--steps a,b] [--no-build]

OUT (default ``gpu_check_out/``, git-ignored) receives ``report.md`` (environment,
one row per step: pass / fail / skip, why, seconds, log file; the goals table;
each step's details), ``report.json``, ``logs/`` and ``bench/*.json`` (the
pytest-benchmark files). A failing step never stops the run; the report is rewritten
after every step, so a killed run still leaves one. Exit status 1 when a step failed.

Steps (``--steps`` picks some; the others are reported as not selected):

1. ``setup``     the Python that runs everything (GPU: a venv over the machine's own
                 torch, ``--system-site-packages``), modules the checks need installed
                 from the wheels folder (``make gpu-wheels``) when missing;
2. ``build``     the extension with CUDA for this GPU (``pip install
                 --no-build-isolation -e .``, ``TORCH_CUDA_ARCH_LIST`` from the device's
                 capability), then what it was built with;
3. ``selftest``  ``omkit selftest --device cuda``: every op against its reference;
4. ``tests``     the CUDA tests (ops vs reference in fp32/fp16/bf16, gradcheck in fp64
                 and ``torch.library.opcheck`` on CUDA, tiles, autocast, mixed-precision
                 training and inference, the predictor on CUDA);
5. ``sanitizer`` ``compute-sanitizer`` memcheck, racecheck and initcheck over
                 ``scripts/sanitizer_driver.py`` (every op forward and backward on odd
                 shapes), the three at once and in the background of steps 4, 6 and 7
                 (collected before the benchmarks); a missing or refusing tool is a skip;
6. ``cli``       ``omkit train --device cuda --precision fp16`` (half a minute), ``omkit
                 predict`` on the real cases, ``omkit evaluate``;
7. ``amp``       fp16 (gradient scaler) and bf16 training steps of every preset;
8. ``bench``     the benchmark suites at full size, each with its own time limit, then
                 the goals (``benchmarks/summarize.py --goals``).

``--dry-run`` (or a machine without a GPU) does every step that needs no GPU, on the
CPU at toy size, and says what it skipped: CI runs it so this script cannot rot. It
never builds the extension (the installed one is used) and never runs a full-size
benchmark.

Inputs, both git-ignored and meant to travel with the checkout to a machine without
network: ``gpu_wheels/`` (``make gpu-wheels``: nibabel, MONAI, hypothesis, ...) and
``gpu_data/`` (``make gpu-data``: a few real BraTS cases). Standard library only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .amp import step_amp
from .bench import bench_suites, step_bench  # noqa: F401 (re-exported)
from .build import step_build, step_setup
from .commands import step_cli
from .core import REPO, RUN_ORDER, STEPS, Check, Step, probe_environment  # noqa: F401 (re-exported)
from .report import write_report
from .sanitizer import launch_sanitizer, step_sanitizer
from .tests import step_selftest, step_tests

Check.write_report = write_report  # type: ignore[attr-defined]

STEP_FUNCTIONS = {"setup": step_setup, "build": step_build, "selftest": step_selftest, "tests": step_tests,
                  "sanitizer": step_sanitizer, "cli": step_cli, "amp": step_amp, "bench": step_bench}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default=str(REPO / "gpu_check_out"),
                        help="folder for report.md, report.json, logs/ and bench/ (default gpu_check_out/)")
    parser.add_argument("--dry-run", action="store_true", help="no GPU work: what runs without one, on the CPU")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for the whole run (default 470 with a GPU: under 8 minutes; 900 dry); steps past it "
                             "are skipped")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--no-build", action="store_true", help="use the installed extension")
    parser.add_argument("--python", default=sys.executable, help="the Python with torch (default: this one)")
    parser.add_argument("--wheels", default=str(REPO / "gpu_wheels"), help="wheels folder (make gpu-wheels)")
    parser.add_argument("--data", default=None, help="a folder of BraTS case folders (default gpu_data/, then "
                                                     "../shared/data/brats2018-sample)")
    args = parser.parse_args(argv)
    selected = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(selected) - set(STEPS))
    if unknown:
        parser.error(f"--steps: unknown {', '.join(unknown)}; the steps are {', '.join(STEPS)}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, args.dry_run, 0, args.python, Path(args.wheels).resolve(),
                  Path(args.data).resolve() if args.data else None, args.no_build)
    probe_environment(check)
    if not check.env.get("cuda_available") and not check.dry:
        print("gpu_check: no CUDA device visible: a dry run", flush=True)
        check.dry = True
    check.budget_s = args.budget_s or (900.0 if check.dry else 470.0)
    check.deadline = check.start + check.budget_s
    for name in RUN_ORDER:
        if name == "tests" and "sanitizer" in selected and not check.dry and check.env.get("cuda_available") \
                and not any(s.name == "build" and s.status == "fail" for s in check.steps):
            launch_sanitizer(check)
        check.step(name, lambda result, log, limit, _n=name: STEP_FUNCTIONS[_n](check, result, log, limit),
                   name in selected)
    failed = [s.name for s in check.steps if s.status == "fail"]
    print(f"gpu_check: {out / 'report.md'}: " + (f"failed: {', '.join(failed)}" if failed else "no step failed"))
    return 1 if failed else 0

