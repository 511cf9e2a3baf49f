#!/usr/bin/env python3
"""The GPU acceptance run of omkit: one command (``make gpu-check``) for a machine
with an NVIDIA GPU that builds the CUDA kernels for that GPU and runs every check
that needs one, in a few minutes, writing what it finds into one folder.

    python3 scripts/gpu_check.py [OUT] [--dry-run] [--budget-s 470] [--steps a,b] [--no-build]

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
import dataclasses
import datetime
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEPS = ("setup", "build", "selftest", "tests", "sanitizer", "cli", "amp", "bench")
# the order they run in: the sanitizer (launched before the tests, in the background) is collected
# after the mixed-precision steps, so that the benchmarks have the GPU to themselves
RUN_ORDER = ("setup", "build", "selftest", "tests", "cli", "amp", "sanitizer", "bench")
TITLES = {
    "setup": "Python, modules, wheels", "build": "build the CUDA extension", "selftest": "omkit selftest",
    "tests": "CUDA tests", "sanitizer": "compute-sanitizer", "cli": "CLI end to end",
    "amp": "mixed-precision steps of every preset", "bench": "benchmarks and goals",
}
# step -> seconds it may take at most (the run's budget may leave less)
LIMITS = {"setup": 120, "build": 240, "selftest": 60, "tests": 120, "sanitizer": 150, "cli": 150, "amp": 90,
          "bench": 420}
# module -> distribution, for the modules the checks import
MODULES = {"numpy": "numpy", "pytest": "pytest", "pluggy": "pluggy", "scipy": "scipy", "sklearn": "scikit-learn",
           "nibabel": "nibabel", "hypothesis": "hypothesis", "tqdm": "tqdm", "matplotlib": "matplotlib",
           "pytest_benchmark": "pytest-benchmark", "monai": "monai"}
OPTIONAL_MODULES = {"monai"}  # only the MONAI benchmark rows need it
TEST_FILES = ["tests/test_ops_cga.py", "tests/test_ops_tiles.py", "tests/test_ops_autocast.py",
              "tests/test_ops_backend.py", "tests/test_selftest.py", "tests/test_precision.py",
              "tests/test_train.py"]
TEST_SELECTION = "cuda or gpu"  # the CUDA variants (parameter ids) and the GPU-only tests
SANITIZER_TOOLS = ("memcheck", "racecheck", "initcheck")
TRAVEL_LIMIT_MIB = 64


@dataclasses.dataclass
class Step:
    """One row of the report."""

    name: str
    status: str = "skip"  # pass, fail, skip
    why: str = ""
    seconds: float = 0.0
    log: str = ""
    details: str = ""
    seconds_from: float | None = None  # a step started before its row (the sanitizer): when


class Check:
    """The run: its folder, budget, the Python it uses, the steps' results and the report."""

    def __init__(self, out: Path, dry: bool, budget_s: float, python: str, wheels: Path, data: Path | None,
                 no_build: bool):
        self.out, self.dry, self.python, self.wheels, self.data = out, dry, python, wheels, data
        self.no_build = no_build
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.budget_s = budget_s
        self.steps: list[Step] = []
        self.env: dict = {}
        self.goals: list[tuple] = []
        self.bench_tables = ""
        self.sanitizer: dict | None = None  # the background compute-sanitizer runs
        (out / "logs").mkdir(parents=True, exist_ok=True)

    # -- running commands ------------------------------------------------------------------
    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, cmd: list[str], log: Path, timeout: float, env: dict | None = None, cwd: Path = REPO):
        """Run ``cmd``, its output appended to ``log``; (exit status or None on timeout, output)."""
        full_env = dict(os.environ, **(env or {}))
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            try:
                proc = subprocess.run(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, errors="replace", timeout=max(1.0, timeout))
                output, rc = proc.stdout, proc.returncode
            except subprocess.TimeoutExpired as exc:
                output = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode("utf-8", "replace")
                rc = None
            except OSError as exc:
                output, rc = f"{type(exc).__name__}: {exc}\n", 127
            fh.write(output)
            fh.write(f"[exit status {rc if rc is not None else f'timeout after {timeout:.0f} s'}]\n\n")
        return rc, output

    def py(self, code: str, log: Path, timeout: float = 120, env: dict | None = None):
        return self.run([self.python, "-c", code], log, timeout, env)

    # -- steps -----------------------------------------------------------------------------
    def step(self, name: str, fn, selected: bool) -> Step:
        index = STEPS.index(name) + 1
        result = Step(name, log=f"logs/{index}-{name}.log")
        log = self.out / result.log
        log.write_text("")
        began = time.monotonic()
        if not selected:
            result.status, result.why, result.log = "skip", "not selected (--steps)", ""
        elif self.remaining() < 10:
            result.status, result.why = "skip", f"the run's time budget ({self.budget_s:.0f} s) is spent"
        else:
            limit = min(LIMITS[name], self.remaining())
            try:
                fn(result, log, limit)
            except Exception as exc:  # the step's own code failed: a row, and the run goes on
                result.status, result.why = "fail", f"gpu_check error: {type(exc).__name__}: {exc}"
        result.seconds = time.monotonic() - (result.seconds_from or began)
        self.steps.append(result)
        self.steps.sort(key=lambda step: STEPS.index(step.name))
        self.write_report()
        print(f"gpu_check: {name:9s} {result.status:4s} {result.seconds:6.1f} s  {result.why}", flush=True)
        return result


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _code(text: str) -> str:
    return "```\n" + text.rstrip() + "\n```\n"


def _mib(path: Path) -> float:
    if not path.exists():
        return 0.0
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


PROBE = r"""
import json, os, platform
info = {"python": platform.python_version()}
try:
    import torch
    info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                cpus=os.cpu_count())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, capability=[p.major, p.minor], gpu_memory_gb=round(p.total_memory / 2**30, 1),
                    bf16=torch.cuda.is_bf16_supported())
except Exception as exc:
    info["torch_error"] = f"{type(exc).__name__}: {exc}"
print("PROBE" + json.dumps(info))
"""

BUILD_INFO = r"""
import json
from omkit import ops
info = {"loaded": ops.extension_loaded(), "why_not": ops.load_error(), "build": ops.build_info(),
        "backends": ops.backend_report()}
try:
    import torch
    if torch.cuda.is_available() and info["build"]:
        info["arch_runs"] = ops._library.cuda_arch_runs(info["build"]["cuda_archs"], torch.cuda.get_device_capability(0))
except Exception as exc:
    info["arch_error"] = str(exc)
print("BUILD" + json.dumps(info))
"""


def _parse(prefix: str, output: str) -> dict | None:
    for line in output.splitlines():
        if line.startswith(prefix):
            return json.loads(line[len(prefix):])
    return None


def probe_environment(check: Check) -> None:
    log = check.out / "logs" / "0-environment.log"
    log.write_text("")
    rc, out = check.py(PROBE, log, timeout=120)
    env = _parse("PROBE", out) or {"probe_error": _tail(out, 3)}
    env["python_executable"] = check.python
    if shutil.which("nvidia-smi"):
        rc, out = check.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                            log, 30)
        env["driver"] = out.strip().splitlines()[0] if rc == 0 and out.strip() else f"nvidia-smi failed ({rc})"
    nvcc = shutil.which("nvcc") or next((str(p) for p in (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin"
                                                          / "nvcc",) if p.exists()), None)
    if nvcc:
        rc, out = check.run([nvcc, "--version"], log, 30)
        match = re.search(r"release ([\d.]+)", out)
        env["nvcc"] = f"{match.group(1) if match else '?'} ({nvcc})"
    env["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip() or "?"
    env["dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                       capture_output=True, text=True).stdout.strip())
    check.env = env


# -- 1. setup -------------------------------------------------------------------------------------

def step_setup(check: Check, result: Step, log: Path, limit: float) -> None:
    notes = []
    if not check.dry:
        venv = check.out / "venv"
        if not (venv / "bin" / "python").exists():
            # --without-pip: the machine's pip runs inside the venv (no ensurepip needed)
            rc, out = check.run([check.python, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                                log, 60)
        if (venv / "bin" / "python").exists():
            check.python = str(venv / "bin" / "python")
            notes.append(f"venv {venv} over the machine's site-packages (its torch)")
        else:  # go on with the machine's Python (the build then installs into it)
            notes.append(f"no venv ({_tail(out, 1)}): the machine's Python is used")
    code = ("import importlib.util, json; print('MISSING' + json.dumps([m for m in %r "
            "if importlib.util.find_spec(m) is None]))" % sorted(MODULES))
    rc, out = check.py(code, log, 60)
    missing = _parse("MISSING", out)
    if missing is None:
        result.status, result.why = "fail", f"{check.python} does not run: {_tail(out, 1)}"
        return
    installed = []
    if missing:
        wheels = sorted(check.wheels.glob("*.whl")) if check.wheels.is_dir() else []
        if wheels:
            dists = [MODULES[m] for m in missing]
            no_deps = [d for d in dists if d == "monai"]  # MONAI would ask for torch again; it is there
            others = [d for d in dists if d not in no_deps]
            for group, extra in ((others, []), (no_deps, ["--no-deps"])):
                if group:
                    rc, out = check.run([check.python, "-m", "pip", "install", "--no-index", "--find-links",
                                         str(check.wheels), *extra, *group], log, max(10, limit - 30))
                    if rc != 0:
                        notes.append(f"pip install {' '.join(group)} failed: {_tail(out, 1)}")
            rc, out = check.py(code, log, 60)
            still = _parse("MISSING", out) or []
            installed = [m for m in missing if m not in still]
            missing = still
        else:
            notes.append(f"no wheels in {check.wheels} (make gpu-wheels fills it)")
    required = [m for m in missing if m not in OPTIONAL_MODULES]
    result.details = "\n".join(f"* {n}" for n in notes + [
        f"installed from {check.wheels}: {', '.join(installed) or 'nothing'}",
        f"missing: {', '.join(missing) or 'nothing'}"]) + "\n"
    if required:
        result.status, result.why = "fail", f"missing modules {', '.join(required)} (no wheel for them)"
    else:
        result.status = "pass"
        result.why = "every module present" + (f"; {', '.join(installed)} from the wheels" if installed else "") + (
            f"; optional {', '.join(missing)} absent (its benchmark rows skip)" if missing else "")


# -- 2. build -------------------------------------------------------------------------------------

def _build_info(check: Check, log: Path) -> dict | None:
    rc, out = check.py(BUILD_INFO, log, 120)
    return _parse("BUILD", out)


def step_build(check: Check, result: Step, log: Path, limit: float) -> None:
    cap = check.env.get("capability")
    if check.dry or not cap:
        info = _build_info(check, log) or {}
        build = info.get("build") or {}
        result.status = "skip"
        result.why = ("no GPU (dry run): the installed extension is used" if check.dry else "no CUDA device visible") + (
            f", built for torch {build.get('torch')}, {'CUDA ' + '+'.join(build['cuda_archs']) if build.get('cuda') else 'CPU kernels only'}"
            if build else f", not loaded: {info.get('why_not')}")
        return
    built = not check.no_build
    if not built:
        result.why = "--no-build: the installed extension is used"
    else:
        arch = f"{cap[0]}.{cap[1]}"
        env = {"TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": str(os.cpu_count() or 4), "FORCE_CUDA": "1",
               "OMKIT_REQUIRE_EXTENSION": "1"}
        # the CUDA library headers that torch's headers include, from the pip CUDA wheels beside torch
        rc, out = check.py("import os, torch; print('INC' + os.path.join(os.path.dirname(os.path.dirname("
                           "torch.__file__)), 'nvidia', 'cu13', 'include'))", log, 60)
        inc = next((line[3:] for line in out.splitlines() if line.startswith("INC")), "")
        if inc and Path(inc).is_dir():
            env["OMKIT_EXTRA_INCLUDE_DIRS"] = inc
        rc, out = check.py("import sys, sysconfig, os; print('MANAGED' + str(sys.prefix == sys.base_prefix and "
                           "os.path.exists(os.path.join(sysconfig.get_paths()['stdlib'], 'EXTERNALLY-MANAGED'))))",
                           log, 60)
        managed = ["--break-system-packages"] if "MANAGEDTrue" in out else []  # no venv, a distribution's Python
        rc, out = check.run([check.python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", *managed,
                             "-e", str(REPO)], log, limit - 20, env=env)
        if rc != 0:
            result.status = "fail"
            result.why = "timed out" if rc is None else f"pip install failed (exit {rc}): {_tail(out, 1)}"
            result.details = _code(_tail(out, 30))
            return
        result.why = f"built for TORCH_CUDA_ARCH_LIST={arch} with MAX_JOBS={env['MAX_JOBS']}"
    info = _build_info(check, log)
    if not info or not info.get("loaded"):
        result.status, result.why = "fail", f"omkit.ops._C does not load: {info and info.get('why_not')}"
        return
    build = info["build"] or {}
    result.details = _code(json.dumps(info, indent=2))
    if not build.get("cuda"):
        result.status, result.why = "fail", "the extension has no CUDA kernels"
    elif not info.get("arch_runs"):
        result.status, result.why = "fail", f"built for {'+'.join(build['cuda_archs'])}, which does not run on sm_{cap[0]}{cap[1]}"
    else:
        result.status = "pass" if built else "skip"
        result.why += f"; CUDA code {'+'.join(build['cuda_archs'])}, every op on the cuda kernel" if all(
            v == "cuda-kernel" for v in info["backends"].values()) else f"; backends {info['backends']}"


# -- 3. selftest ----------------------------------------------------------------------------------

def step_selftest(check: Check, result: Step, log: Path, limit: float) -> None:
    device = "cpu" if check.dry or not check.env.get("cuda_available") else "cuda"
    rc, out = check.run([check.python, "-m", "omkit", "selftest", "--device", device], log, limit)
    summary = next((line for line in reversed(out.splitlines()) if " checks: " in line), _tail(out, 1))
    result.details = _code(out[out.find("omkit selftest:"):] if "omkit selftest:" in out else _tail(out, 40))
    result.status = "pass" if rc == 0 else "fail"
    result.why = f"{device}: {summary}" if rc is not None else "timed out"


# -- 4. tests -------------------------------------------------------------------------------------

def _junit_counts(path: Path) -> dict | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_ids"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                            if c.find("failure") is not None or c.find("error") is not None][:20]
    return counts


def step_tests(check: Check, result: Step, log: Path, limit: float) -> None:
    xml = check.out / "tests.xml"
    rc, out = check.run([check.python, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "-rs",
                         "-k", TEST_SELECTION, f"--junitxml={xml}", *TEST_FILES], log, limit)
    counts = _junit_counts(xml)
    if rc is None or counts is None:
        result.status, result.why = "fail", "timed out" if rc is None else f"pytest did not report (exit {rc})"
        result.details = _code(_tail(out, 30))
        return
    text = f"{counts['passed']} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"
    if counts["failures"] or counts["errors"] or rc not in (0, 5):
        result.status, result.why = "fail", text
        result.details = "Failed:\n\n" + "\n".join(f"* `{t}`" for t in counts["failed_ids"]) + "\n\n" + _code(_tail(out, 30))
    elif check.dry or not check.env.get("cuda_available"):
        result.status, result.why = "skip", f"no GPU: the CUDA selection ({counts['tests']} tests) ran: {text}"
    else:
        result.status, result.why = "pass", text


# -- 5. compute-sanitizer -------------------------------------------------------------------------

def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for base in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if base and (Path(base) / "bin" / "compute-sanitizer").exists():
            return str(Path(base) / "bin" / "compute-sanitizer")
    return None


def _sanitizer_command(tool: str, name: str, check: Check, filtered: bool) -> tuple[list[str], dict, Path]:
    report = check.out / "logs" / f"sanitizer-{name}.txt"
    cmd = [tool, "--tool", name, "--error-exitcode", "99", "--print-limit", "30", "--log-file", str(report)]
    if filtered:  # only omkit's kernels: torch's own are not under test (and initcheck would flag its workspaces)
        cmd += ["--kernel-name", "kns=omkit"]
    cmd += [check.python, str(REPO / "scripts" / "sanitizer_driver.py"), "--device", "cuda"]
    env = dict(os.environ)
    if name in ("memcheck", "initcheck"):  # one allocation per tensor: out-of-bounds accesses are seen
        env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"
    return cmd, env, report


def launch_sanitizer(check: Check) -> None:
    """Start memcheck, racecheck and initcheck (in the background: they run while the tests, the
    CLI and the mixed-precision steps do, and the sanitizer step collects them)."""
    tool = find_sanitizer()
    if tool is None:
        return
    check.sanitizer = {"tool": tool, "started": time.monotonic(), "procs": {}}
    for name in SANITIZER_TOOLS:
        cmd, env, report = _sanitizer_command(tool, name, check, filtered=True)
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace")
        check.sanitizer["procs"][name] = (cmd, report, proc)


def _finish(proc, timeout: float):
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
        return proc.returncode, out or ""
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return None, out or ""


def step_sanitizer(check: Check, result: Step, log: Path, limit: float) -> None:
    tool = find_sanitizer()
    if check.dry or not check.env.get("cuda_available"):
        rc, out = check.run([check.python, str(REPO / "scripts" / "sanitizer_driver.py"), "--device", "cpu"], log,
                            limit)
        result.status = "skip" if rc == 0 else "fail"
        line = _tail(out, 1)
        result.why = (f"no GPU: compute-sanitizer {'found' if tool else 'not found'}, not run; the driver ran on the "
                      f"CPU: {line}") if rc == 0 else f"the driver failed on the CPU: {line}"
        return
    if tool is None:
        result.status, result.why = "skip", "compute-sanitizer not found (PATH, CUDA_HOME/bin, /usr/local/cuda/bin)"
        return
    if check.sanitizer is None:
        launch_sanitizer(check)
    started = check.sanitizer["started"]
    deadline = started + LIMITS["sanitizer"] + LIMITS["tests"] + LIMITS["cli"] + LIMITS["amp"]
    deadline = min(deadline, time.monotonic() + limit)
    rows, failed, refused = [], [], []
    for name, (cmd, report, proc) in check.sanitizer["procs"].items():
        rc, out = _finish(proc, deadline - time.monotonic())
        text = (report.read_text(errors="replace") if report.exists() else "") + out
        if rc not in (0, 99, None) and re.search(r"kernel-name|nrecognized|nvalid|nknown option", text):
            # this compute-sanitizer does not take the kernel filter: every kernel, torch's too
            cmd, env, report = _sanitizer_command(tool, name, check, filtered=False)
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(f"$ {' '.join(cmd)}  (again, without the kernel filter)\n{text}\n")
            rc, out = check.run(cmd, log, max(5.0, deadline - time.monotonic()), env=env)
            text = (report.read_text(errors="replace") if report.exists() else "") + out
            name = f"{name} (all kernels)"
        else:
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(f"$ {' '.join(cmd)}\n{text}\n[exit status {rc}]\n\n")
        summary = next((line.strip() for line in text.splitlines() if "ERROR SUMMARY" in line), "")
        if rc == 0:
            rows.append((name, "pass", summary or "no errors"))
        elif rc == 99:
            rows.append((name, "fail", summary or "errors reported"))
            failed.append(name)
        elif rc is None:
            rows.append((name, "fail", "timed out"))
            failed.append(name)
        else:
            reason = next((line.strip() for line in text.splitlines() if "rror" in line or "nrecognized" in line),
                          _tail(text, 1))
            rows.append((name, "skip", f"the tool or the driver stopped (exit {rc}): {reason[:160]}"))
            refused.append(name)
    result.seconds_from = started  # launched before the tests: its row counts from then
    result.details = "The three tools ran at once, in the background of the tests, CLI and mixed-precision steps.\n\n" \
        "| tool | result | summary |\n|---|---|---|\n" + "".join(f"| {n} | {s} | {w} |\n" for n, s, w in rows) + \
        "\nReports: " + ", ".join(f"`logs/sanitizer-{n}.txt`" for n in SANITIZER_TOOLS) + "\n"
    if failed:
        result.status, result.why = "fail", f"{', '.join(failed)} found errors or timed out"
    elif refused and len(refused) == len(rows):
        result.status, result.why = "skip", f"compute-sanitizer did not run ({rows[0][2]})"
    else:
        result.status = "pass"
        result.why = "no errors in the omkit kernels" + (f"; {', '.join(refused)} did not run" if refused else "")


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
                return folder, f"{len(cases)} real cases in {folder} ({_mib(folder):.1f} MiB)"
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
        kind = f"{len(cases)} real cases ({', '.join(c.name for c in cases)}, {sum(_mib(c) for c in cases):.1f} MiB)"
    if data is None:
        data = work / "data"
        rc, out = check.py(f"from omkit.data import synthetic; synthetic.make_dataset({str(data)!r}, num_cases=3, "
                           f"shape={(32, 64, 64) if gpu else (16, 32, 32)}, seed=5)", log, 120)
        if rc != 0:
            result.status, result.why = "fail", f"could not write synthetic cases: {_tail(out, 1)}"
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


# -- 7. mixed precision ---------------------------------------------------------------------------

def step_amp(check: Check, result: Step, log: Path, limit: float) -> None:
    out_json = check.out / "amp.json"
    script = str(REPO / "scripts" / "mixed_precision_steps.py")
    if check.dry or not check.env.get("cuda_available"):
        args = ["--device", "cpu", "--precisions", "bf16", "--presets", "omnet_cga,mc1", "--width", "0.125",
                "--patch", "8,16,16", "--batch", "1", "--steps", "1"]
    else:
        args = ["--device", "cuda", "--precisions", "fp16,bf16" if check.env.get("bf16", True) else "fp16",
                "--width", "1.0", "--patch", "16,32,32", "--batch", "4", "--steps", "3"]
    rc, out = check.run([check.python, script, *args, "--json", str(out_json)], log, limit)
    rows = json.loads(out_json.read_text())["rows"] if out_json.exists() else []
    result.details = "| precision | preset | finite | losses | CGA op | peak CUDA MB | s/step |\n|---|---|---|---|---|---|---|\n" + "".join(
        f"| {r['precision']} | {r['preset']} | {'yes' if r['finite'] else 'NO'} | {r.get('losses', r.get('error', ''))} "
        f"| {', '.join(r.get('ops', [])) or '-'} | {r.get('peak_cuda_mb', '')} | {r.get('seconds_per_step', '')} |\n"
        for r in rows)
    bad = [f"{r['precision']} {r['preset']}" for r in rows if not r["finite"]]
    if rc is None:
        result.status, result.why = "fail", "timed out"
    elif rc != 0 or bad or not rows:
        result.status, result.why = "fail", f"not finite or failed: {', '.join(bad) or _tail(out, 1)}"
    else:
        where = "cpu (dry run: bf16, two presets; tests/test_precision.py covers all)" if "cpu" in args else "cuda"
        result.status = "pass"
        result.why = f"{len(rows)} preset steps finite on {where}"


# -- 8. benchmarks and goals ----------------------------------------------------------------------

def bench_suites(dry: bool) -> list[tuple[str, list[str], int]]:
    """(name, pytest arguments, seconds at most), in the order they run: what the goals need first."""
    if dry:  # toy sizes, a few rows of three suites in one process: enough for the JSON and the goals table
        return [("smoke", ["benchmarks/test_bench_case.py", "benchmarks/test_bench_cga.py",
                           "benchmarks/test_bench_train.py", "-k",
                           "((omnet_cga-paper or omnet_cga-dense or omnet_cga-file) and not +) or "
                           "(test_cga_forward and (fused or compiled)"
                           " and not inference) or (test_train_step and omnet_cga and not +)"], 180)]
    return [
        ("case", ["benchmarks/test_bench_case.py", "-k",
                  "(omnet_cga-paper or omnet_cga-dense or mc3-paper or omnet_cga-monai or omnet_cga-file) and not +"],
         150),
        ("train", ["benchmarks/test_bench_train.py"], 60),
        ("cga", ["benchmarks/test_bench_cga.py"], 150),
        ("tiles", ["benchmarks/test_bench_tiles.py"], 60),
        ("case-settings", ["benchmarks/test_bench_case.py", "-k", "(large or tta or +) and not compile"], 90),
        ("case-compile", ["benchmarks/test_bench_case.py", "-k", "compile"], 120),
    ]


def _load_summarize():
    spec = importlib.util.spec_from_file_location("omkit_bench_summarize", REPO / "benchmarks" / "summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step_bench(check: Check, result: Step, log: Path, limit: float) -> None:
    bench = check.out / "bench"
    bench.mkdir(exist_ok=True)
    gpu = not check.dry and check.env.get("cuda_available")
    env = {"OMKIT_BENCH_SMOKE": "0" if gpu else "1", "OMKIT_BENCH_MAX_ROUNDS": "5"}
    data, kind = data_folder(check) if gpu else (None, "")
    if data is not None:
        env["OMKIT_SAMPLE_DATA"] = str(data)
    deadline = time.monotonic() + limit
    rows, files = [], []
    for name, args, seconds in bench_suites(not gpu):
        left = deadline - time.monotonic()
        if left < 15:
            rows.append((name, "skip", 0.0, "no time left in the run's budget"))
            continue
        out_json = bench / f"{name}.json"
        out_json.unlink(missing_ok=True)
        began = time.monotonic()
        rc, out = check.run([check.python, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                             *args, f"--benchmark-json={out_json}", "--benchmark-columns=median,mean,rounds"],
                            log, min(seconds, left), env=env)
        took = time.monotonic() - began
        if out_json.exists():
            files.append(out_json)
        last = next((line for line in reversed(out.splitlines()) if re.search(r"passed|failed|skipped|error", line)),
                    _tail(out, 1))
        status = "pass" if rc == 0 else "fail" if rc is not None else "fail"
        rows.append((name, status, took, "timed out (its rows are lost)" if rc is None else last.strip()[:150]))
    summarize = _load_summarize()
    groups: dict = {}
    for path in files:
        groups.update(summarize.group_rows(json.loads(path.read_text())))
    tables = []
    for group, members in groups.items():
        kind_ = summarize.kind_of(group)
        if kind_ == "case":
            lines = summarize._case_table(members, summarize.BASELINES["case"][0])
        elif kind_ == "train":
            lines = summarize._train_table(members, summarize.BASELINES["train"][0])
        else:
            lines = summarize._ratio_table(members, [b for b in summarize.BASELINES[kind_] if b in members], kind_)
        tables.append(f"#### {group}\n\n" + "\n".join(lines) + "\n")
    check.goals = summarize.goals(groups)
    check.bench_tables = "\n".join(tables)
    result.details = ("Data: " + (kind or "synthetic") + (", full size" if gpu else ", toy size (OMKIT_BENCH_SMOKE=1)")
                      + "\n\n| suite | result | seconds | pytest |\n|---|---|---|---|\n" + "".join(
                          f"| {n} | {s} | {t:.0f} | {w} |\n" for n, s, t, w in rows)
                      + "\nJSON: " + ", ".join(f"`bench/{p.name}`" for p in files) + "\n")
    failed = [n for n, s, _, _ in rows if s == "fail"]
    if failed:
        result.status, result.why = "fail", f"suites {', '.join(failed)} failed or timed out"
    elif not gpu:
        result.status, result.why = "skip", "no GPU: toy-size subsets ran on the CPU to produce the JSON and goals"
    else:
        met = sum(v == "met" for *_, v in check.goals)
        result.status, result.why = "pass", f"{len(files)} suites; goals met {met}/{len(check.goals)}"


# -- the report -----------------------------------------------------------------------------------

def write_report(check: Check) -> None:
    env = check.env
    lines = [f"# omkit GPU check ({'dry run, no GPU' if check.dry else 'GPU'})", "",
             f"{datetime.datetime.now().isoformat(timespec='seconds')}, commit {env.get('git', '?')}"
             f"{' (with uncommitted changes)' if env.get('dirty') else ''}, "
             f"{time.monotonic() - check.start:.0f} s of a {check.budget_s:.0f} s budget.", "",
             "## Environment", "", "| | |", "|---|---|"]
    for key in ("gpu", "capability", "gpu_memory_gb", "driver", "torch", "cuda", "cudnn", "nvcc", "python",
                "python_executable", "cpus", "torch_error", "probe_error"):
        if key in env:
            value = env[key]
            value = f"sm_{value[0]}{value[1]}" if key == "capability" else value
            lines.append(f"| {key} | {value} |")
    lines += ["", "## Steps", "", "| # | step | result | why | seconds | log |", "|---|---|---|---|---|---|"]
    for step in check.steps:
        i = STEPS.index(step.name) + 1
        log = f"`{step.log}`" if step.log else ""
        lines.append(f"| {i} | {step.name}: {TITLES[step.name]} | **{step.status}** | "
                     f"{step.why.replace('|', '/')} | {step.seconds:.1f} | {log} |")
    lines += ["", "## Goals", "", "| goal | target | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| {g} | {t} | {m} | {v} |" for g, t, m, v in check.goals] or ["| (the bench step did not run) | | | |"]
    lines += ["", "## Inputs that travel with the checkout", "", "| folder | MiB |", "|---|---|"]
    sizes = {"gpu_wheels/": _mib(check.wheels), "gpu_data/": _mib(REPO / "gpu_data")}
    lines += [f"| {k} | {v:.1f} |" for k, v in sizes.items()]
    total = sum(sizes.values())
    lines += [f"| total | {total:.1f} ({'within' if total <= TRAVEL_LIMIT_MIB else 'OVER'} {TRAVEL_LIMIT_MIB} MiB) |"]
    for step in check.steps:
        if step.details:
            lines += ["", f"## {STEPS.index(step.name) + 1}. {TITLES[step.name]}", "", step.details.rstrip()]
    if check.bench_tables:
        lines += ["", "## Benchmark tables", "", check.bench_tables.rstrip()]
    (check.out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (check.out / "report.json").write_text(json.dumps({
        "dry_run": check.dry, "environment": env, "steps": [dataclasses.asdict(s) for s in check.steps],
        "goals": [dict(zip(("goal", "target", "measured", "verdict"), g)) for g in check.goals],
        "travel_mib": sizes, "seconds": round(time.monotonic() - check.start, 1)}, indent=2), encoding="utf-8")


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


if __name__ == "__main__":
    sys.exit(main())
