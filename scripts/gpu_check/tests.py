"""Steps 3 and 4: omkit selftest on CUDA and the CUDA tests."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from .core import Check, Step, TEST_FILES, TEST_SELECTION, code_span, tail

# -- 3. selftest ----------------------------------------------------------------------------------

def step_selftest(check: Check, result: Step, log: Path, limit: float) -> None:
    device = "cpu" if check.dry or not check.env.get("cuda_available") else "cuda"
    rc, out = check.run([check.python, "-m", "omkit", "selftest", "--device", device], log, limit)
    summary = next((line for line in reversed(out.splitlines()) if " checks: " in line), tail(out, 1))
    result.details = code_span(out[out.find("omkit selftest:"):] if "omkit selftest:" in out else tail(out, 40))
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
        result.details = code_span(tail(out, 30))
        return
    text = f"{counts['passed']} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"
    if counts["failures"] or counts["errors"] or rc not in (0, 5):
        result.status, result.why = "fail", text
        result.details = "Failed:\n\n" + "\n".join(f"* `{t}`" for t in counts["failed_ids"]) + "\n\n" + code_span(tail(out, 30))
    elif check.dry or not check.env.get("cuda_available"):
        result.status, result.why = "skip", f"no GPU: the CUDA selection ({counts['tests']} tests) ran: {text}"
    else:
        result.status, result.why = "pass", text
