"""scripts/gpu_check (a package), the GPU acceptance run: its report (one row per step with
result, reason, seconds and log; the goals; the sizes that travel), a failing or
stuck step that does not stop the run, the dry mode on this machine, and that its
benchmark selections pick the rows the goals need. (CI also runs the whole dry
mode: make gpu-check-dry.)"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "scripts" / "gpu_check")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses and submodules look the package up
    spec.loader.exec_module(module)
    return module


def _table(report: str, heading: str) -> list[list[str]]:
    """The rows of the markdown table under ``## heading``."""
    section = report.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_a_failing_or_stuck_step_does_not_stop_the_run(gpu_check, tmp_path, monkeypatch):
    """Steps stubbed: one passes, one raises, one runs past its limit, one is not selected;
    every row is in the report with its result, reason, seconds and log, and the run ends."""
    def passes(check, result, log, limit):
        rc, _ = check.run([sys.executable, "-c", "print('fine')"], log, limit)
        result.status, result.why = ("pass", "printed") if rc == 0 else ("fail", "?")

    def raises(check, result, log, limit):
        raise RuntimeError("the step's own bug")

    def stuck(check, result, log, limit):
        rc, _ = check.run([sys.executable, "-c", "import time; time.sleep(30)"], log, 1.0)
        result.status, result.why = ("fail", "timed out") if rc is None else ("pass", "")

    stubs = dict.fromkeys(gpu_check.STEPS, passes)
    stubs.update(build=raises, sanitizer=stuck)
    monkeypatch.setattr(gpu_check, "STEP_FUNCTIONS", stubs)
    monkeypatch.setattr(gpu_check, "probe_environment", lambda check: check.env.update(torch="stub", git="abc"))
    code = gpu_check.main([str(tmp_path / "out"), "--dry-run", "--steps",
                           ",".join(s for s in gpu_check.STEPS if s != "amp")])
    assert code == 1  # a step failed
    report = (tmp_path / "out" / "report.md").read_text()
    rows = {row[1].split(":")[0]: row for row in _table(report, "Steps")}
    assert list(rows) == list(gpu_check.STEPS)
    assert [rows[s][2] for s in gpu_check.STEPS] == [
        "**pass**", "**fail**", "**pass**", "**pass**", "**fail**", "**pass**", "**skip**", "**pass**"]
    assert "RuntimeError: the step's own bug" in rows["build"][3]
    assert rows["sanitizer"][3] == "timed out" and rows["amp"][3] == "not selected (--steps)"
    for name, row in rows.items():
        assert re.fullmatch(r"\d+\.\d", row[4]), row
        if name != "amp":
            log = row[5].strip("`")
            assert (tmp_path / "out" / log).is_file(), log
    assert "timeout after 1 s" in (tmp_path / "out" / rows["sanitizer"][5].strip("`")).read_text()
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["status"] for s in saved["steps"]].count("fail") == 2 and saved["dry_run"]
    assert _table(report, "Goals") == [["(the bench step did not run)", "", "", ""]]
    travel = _table(report, "Inputs that travel with the checkout")
    assert [r[0] for r in travel] == ["gpu_wheels/", "gpu_data/", "total"] and "64 MiB" in travel[-1][1]


def test_budget_spent_skips_the_rest(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "probe_environment", lambda check: None)
    monkeypatch.setattr(gpu_check, "STEP_FUNCTIONS", dict.fromkeys(gpu_check.STEPS, lambda *a: None))
    assert gpu_check.main([str(tmp_path), "--dry-run", "--budget-s", "5"]) == 0
    rows = _table((tmp_path / "report.md").read_text(), "Steps")
    assert {row[2] for row in rows} == {"**skip**"} and all("time budget" in row[3] for row in rows)


def test_dry_run_on_this_machine(tmp_path):
    """The script itself, in its dry mode, on the cheap steps: the environment table, a row
    per step, the selftest's table in the details."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check"), str(tmp_path), "--dry-run",
                           "--steps", "setup,build,selftest"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# omkit GPU check (dry run, no GPU)")
    env = dict((row[0], row[1]) for row in _table(report, "Environment"))
    assert env["torch"].startswith("2.") and env["python_executable"] == sys.executable
    rows = {row[1].split(":")[0]: row[2] for row in _table(report, "Steps")}
    assert rows["setup"] == "**pass**" and rows["build"] == "**skip**" and rows["selftest"] == "**pass**"
    assert all(rows[s] == "**skip**" for s in ("tests", "sanitizer", "cli", "amp", "bench"))
    assert "omkit selftest: device cpu" in report and " checks: " in report
    assert "gpu_check: selftest  pass" in proc.stdout


def _collected(args: list[str]) -> set[str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly",
                           "-p", "no:cacheprovider", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMKIT_BENCH_SMOKE": "0"})
    return {line.split("::")[-1] for line in proc.stdout.splitlines() if "::" in line}


def test_gpu_benchmark_suites_select_the_goal_rows(gpu_check):
    suites = {name: args for name, args, _ in gpu_check.bench_suites(dry=False)}
    case = _collected(suites["case"])
    assert case == {f"test_case_inference[{v}]" for v in
                    ("omnet_cga-paper", "omnet_cga-dense", "mc3-paper", "omnet_cga-monai", "omnet_cga-file")}
    settings = _collected(suites["case-settings"])
    assert "test_case_inference[omnet_cga-large]" in settings and "test_case_inference[omnet_cga-paper+fp16]" in settings
    assert not any("compile" in name for name in settings) and not settings & case
    assert _collected(suites["case-compile"]) == {"test_case_inference[omnet_cga-paper+compile]"}


def test_gpu_mode_paths_with_a_simulated_gpu(gpu_check, tmp_path, monkeypatch):
    """Every GPU branch of the script, with the machine simulated: commands answer as they
    would on a GPU (a fake compute-sanitizer on PATH, canned outputs, the files pytest and
    the drivers write). What cannot run here is the GPU; the script's own logic does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "compute-sanitizer"
    tool.write_text("#!/bin/sh\necho '========= ERROR SUMMARY: 0 errors'\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    data = tmp_path / "data" / "brats"
    for case in ("Brats18_A", "Brats18_B", "Brats18_C"):
        (data / case).mkdir(parents=True)
        (data / case / f"{case}_flair.nii.gz").write_bytes(b"x")
    ran = []

    def bench_json(name):
        rows = {"case": [("case", 1.0, {"variant": "omnet_cga-paper"}), ("case", 2.4, {"variant": "mc3-paper"}),
                         ("case", 1.5, {"variant": "omnet_cga-monai"}), ("case", 1.8, {"variant": "omnet_cga-file"}),
                         ("case", 0.24, {"variant": "omnet_cga-dense"})],
                "train": [("train", 0.5, {"preset": "omnet_cga"})],
                "cga": [("cga forward paper-20", 0.004, {}), ("cga forward paper-20", 0.002, {})]}.get(name, [])
        out = []
        for i, (group, median, params) in enumerate(rows):
            info = {"width": 1.0, "preset": params.get("preset"), "peak_cuda_mb": 3500.0, "batch_per_task": 20,
                    "device": "cuda"}
            if group.startswith("cga"):
                info["impl"] = ("compiled", "fused")[i]
            out.append({"group": group, "name": f"t{i}", "params": params, "extra_info": info,
                        "stats": {"median": median, "mean": median, "stddev": 0.0, "rounds": 5}})
        return {"benchmarks": out}

    def fake_run(self, cmd, log, timeout, env=None, cwd=None):
        ran.append(cmd)
        text = " ".join(map(str, cmd))
        with open(log, "a") as fh:
            fh.write(f"$ {text}\n")
        if "-m venv" in text:  # the venv over the machine's site-packages
            (Path(cmd[-1]) / "bin").mkdir(parents=True)
            (Path(cmd[-1]) / "bin" / "python").symlink_to(sys.executable)
            return 0, ""
        if "MISSING" in text:
            return 0, "MISSING[]\n"
        if "BUILD" in text:
            return 0, 'BUILD{"loaded": true, "why_not": null, "build": {"torch": "2.11.0", "cuda": true, ' \
                      '"cuda_archs": ["sm_90"], "debug": false}, "backends": {"cga": "cuda-kernel"}, "arch_runs": true}\n'
        if "INC" in text:
            return 0, "INC/nonexistent\n"
        if "omkit selftest" in text or text.endswith("selftest --device cuda"):
            return 0, "omkit selftest: device cuda (H200, sm_90)\nop dtype\n30 checks: 30 passed, 0 failed, 0 skipped\n"
        if "pytest" in text and "--junitxml" in text:
            xml = next(a for a in cmd if a.startswith("--junitxml=")).split("=", 1)[1]
            Path(xml).write_text('<testsuites><testsuite tests="40" failures="0" errors="0" skipped="2">'
                                 '</testsuite></testsuites>')
            return 0, "38 passed, 2 skipped\n"
        if "mixed_precision_steps" in text:
            path = cmd[cmd.index("--json") + 1]
            Path(path).write_text(json.dumps({"rows": [{"preset": "omnet_cga", "precision": "fp16", "finite": True,
                                                        "losses": [4.1, 4.0], "ops": ["cga:float16:kernel"],
                                                        "peak_cuda_mb": 900.0, "seconds_per_step": 0.05}]}))
            return 0, "mixed_precision_steps: 1/1 preset steps finite on cuda\n"
        if "--benchmark-json" in text:
            path = Path(next(a for a in cmd if a.startswith("--benchmark-json=")).split("=", 1)[1])
            path.write_text(json.dumps(bench_json(path.stem)))
            return 0, "4 passed in 3.00s\n"
        if "evaluate" in text:
            out = Path(cmd[cmd.index("-o") + 1])
            out.mkdir(parents=True)
            (out / "summary.json").write_text(json.dumps({"regions": {"WT": {"dice": {"mean": 0.5}}}}))
        return 0, "done\n"

    monkeypatch.setattr(gpu_check.Check, "run", fake_run)
    monkeypatch.setattr(gpu_check, "probe_environment", lambda check: check.env.update(
        torch="2.11.0+cu130", cuda="13.0", cuda_available=True, capability=[9, 0], gpu="NVIDIA H200", bf16=True))
    out = tmp_path / "out"
    assert gpu_check.main([str(out), "--data", str(tmp_path / "data"), "--python", sys.executable]) == 0
    report = (out / "report.md").read_text()
    assert report.startswith("# omkit GPU check (GPU)")
    rows = {row[1].split(":")[0]: (row[2], row[3]) for row in _table(report, "Steps")}
    assert {status for status, _ in rows.values()} == {"**pass**"}, rows
    assert "TORCH_CUDA_ARCH_LIST=9.0" in rows["build"][1] and "sm_90" in rows["build"][1]
    assert rows["sanitizer"][1] == "no errors in the omkit kernels"
    assert "2 real cases" in rows["cli"][1] and "fp16" in rows["cli"][1]
    pip = next(c for c in ran if "pip" in c and "-e" in c)
    assert "--no-build-isolation" in pip and str(out / "venv" / "bin" / "python") == pip[0]
    train = next(c for c in ran if "train" in c)
    assert train[train.index("--device") + 1] == "cuda" and "--max-minutes" in train
    goals = {row[0]: row[3] for row in _table(report, "Goals")}
    assert list(goals.values()) == ["met"] * 8, goals
    assert "| memcheck | pass | ========= ERROR SUMMARY: 0 errors |" in report
    suites = [Path(a.split("=", 1)[1]).stem for c in ran for a in c if str(a).startswith("--benchmark-json=")]
    assert suites[:3] == ["case", "train", "cga"]
