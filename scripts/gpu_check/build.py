"""Steps 1 and 2: the Python that runs the check, and the extension built for this GPU."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .core import BUILD_INFO, Check, MODULES, OPTIONAL_MODULES, REPO, Step, code_span, parse_marked, tail

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
            notes.append(f"no venv ({tail(out, 1)}): the machine's Python is used")
    code = ("import importlib.util, json; print('MISSING' + json.dumps([m for m in %r "
            "if importlib.util.find_spec(m) is None]))" % sorted(MODULES))
    rc, out = check.py(code, log, 60)
    missing = parse_marked("MISSING", out)
    if missing is None:
        result.status, result.why = "fail", f"{check.python} does not run: {tail(out, 1)}"
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
                        notes.append(f"pip install {' '.join(group)} failed: {tail(out, 1)}")
            rc, out = check.py(code, log, 60)
            still = parse_marked("MISSING", out) or []
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
    return parse_marked("BUILD", out)


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
            result.why = "timed out" if rc is None else f"pip install failed (exit {rc}): {tail(out, 1)}"
            result.details = code_span(tail(out, 30))
            return
        result.why = f"built for TORCH_CUDA_ARCH_LIST={arch} with MAX_JOBS={env['MAX_JOBS']}"
    info = _build_info(check, log)
    if not info or not info.get("loaded"):
        result.status, result.why = "fail", f"omkit.ops._C does not load: {info and info.get('why_not')}"
        return
    build = info["build"] or {}
    result.details = code_span(json.dumps(info, indent=2))
    if not build.get("cuda"):
        result.status, result.why = "fail", "the extension has no CUDA kernels"
    elif not info.get("arch_runs"):
        result.status, result.why = "fail", f"built for {'+'.join(build['cuda_archs'])}, which does not run on sm_{cap[0]}{cap[1]}"
    else:
        result.status = "pass" if built else "skip"
        result.why += f"; CUDA code {'+'.join(build['cuda_archs'])}, every op on the cuda kernel" if all(
            v == "cuda-kernel" for v in info["backends"].values()) else f"; backends {info['backends']}"
