"""The GPU check's shared parts: its constants, the run (``Check``) and a step's result
(``Step``), the environment probe and small helpers."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
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


def tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def code_span(text: str) -> str:
    return "```\n" + text.rstrip() + "\n```\n"


def size_mib(path: Path) -> float:
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


def parse_marked(prefix: str, output: str) -> dict | None:
    for line in output.splitlines():
        if line.startswith(prefix):
            return json.loads(line[len(prefix):])
    return None


def probe_environment(check: Check) -> None:
    log = check.out / "logs" / "0-environment.log"
    log.write_text("")
    rc, out = check.py(PROBE, log, timeout=120)
    env = parse_marked("PROBE", out) or {"probe_error": tail(out, 3)}
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
