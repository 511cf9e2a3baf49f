"""The report: report.md and report.json, rewritten after every step."""
from __future__ import annotations

import dataclasses
import datetime
import json
import time

from .core import Check, REPO, STEPS, TITLES, TRAVEL_LIMIT_MIB, size_mib

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
    sizes = {"gpu_wheels/": size_mib(check.wheels), "gpu_data/": size_mib(REPO / "gpu_data")}
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


