"""Step 5: compute-sanitizer (memcheck, racecheck, initcheck) over every op, in the background."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from .core import Check, LIMITS, REPO, SANITIZER_TOOLS, Step, tail

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
        line = tail(out, 1)
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
                          tail(text, 1))
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
