"""Step 7: mixed-precision training steps of every preset."""
from __future__ import annotations

import json
from pathlib import Path

from .core import Check, REPO, Step, tail

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
        result.status, result.why = "fail", f"not finite or failed: {', '.join(bad) or tail(out, 1)}"
    else:
        where = "cpu (dry run: bf16, two presets; tests/test_precision.py covers all)" if "cpu" in args else "cuda"
        result.status = "pass"
        result.why = f"{len(rows)} preset steps finite on {where}"
