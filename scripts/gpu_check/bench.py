"""Step 8: the benchmark suites at full size, then the goals."""
from __future__ import annotations

import importlib.util
import json
import re
import time
from pathlib import Path

from .core import Check, REPO, Step, tail
from .commands import data_folder

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
                    tail(out, 1))
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
            lines = summarize.case_table(members, summarize.BASELINES["case"][0])
        elif kind_ == "train":
            lines = summarize.train_table(members, summarize.BASELINES["train"][0])
        else:
            lines = summarize.ratio_table(members, [b for b in summarize.BASELINES[kind_] if b in members], kind_)
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
