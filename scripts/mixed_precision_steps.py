"""A few mixed-precision training steps of every preset (``omkit.list_presets()``),
as the trainer takes them: autocast forward, float32 losses, the gradient scaler for
fp16, SGD; checks that every loss is finite and that the gradients are (for fp16: in
every step the scaler did not skip, and it may skip all but one: its first scale,
2**16, can overflow float16 once), and says which path the CGA op took. Part of ``make gpu-check`` (fp16 and bf16 on a GPU; bf16 on a CPU in its
dry mode).

Usage: python scripts/mixed_precision_steps.py [--device cuda] [--precisions fp16,bf16]
           [--width 1.0] [--patch 16,32,32] [--batch 4] [--steps 3] [--json OUT.json]
Exit status 1 when a preset's step is not finite or raises.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time


def run_preset(preset: str, device, precision: str, width: float, patch, batch: int, steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    import omkit
    from omkit import ops
    from omkit.devices import autocast, convolution_guard
    from omkit.labels import NUM_CLASSES_TASK
    from omkit.training import TrainConfig
    from omkit.training.optim import build_optimizer, build_scaler

    torch.manual_seed(0)
    model = omkit.create_model(preset, width=width).to(device).train()
    config = TrainConfig(precision=precision, device=device.type, lr=1e-3)
    opt, scaler = build_optimizer(config, model), build_scaler(config)
    n = omkit.get_preset(preset).num_tasks
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(batch, 4, *patch, generator=g).to(device) for _ in range(n)] + [None] * (3 - n)
    labels = [torch.randint(0, k, (batch, *patch), generator=g).to(device) for k in NUM_CLASSES_TASK[:n]]
    losses, finite, paths, skipped = [], True, set(), 0
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with convolution_guard(device, precision):
            with autocast(device, precision), ops.record_dispatch() as calls:
                outputs = model.forward_tasks(inputs, None)
            loss = sum(F.cross_entropy(o.float(), y) for o, y in zip(outputs, labels) if o is not None)
            scaler.scale(loss).backward()
        if precision == "fp16":
            scaler.unscale_(opt)
        grads_finite = all(torch.isfinite(p.grad).all().item() for p in model.parameters() if p.grad is not None)
        if precision == "fp16" and not grads_finite:
            skipped += 1  # the scaler skips this step and lowers its scale
        else:
            finite &= grads_finite
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))
        paths |= {f"{c.op}:{c.dtype}:{c.path}" for c in calls}
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    finite &= all(math.isfinite(v) for v in losses) and skipped < steps
    row = {"preset": preset, "precision": precision, "losses": [round(v, 5) for v in losses], "finite": finite,
           "ops": sorted(paths), "seconds_per_step": round(seconds / steps, 4), "skipped_by_scaler": skipped}
    if device.type == "cuda":
        row["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row


def main(argv=None) -> int:
    import torch

    import omkit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", default=None, help="default: fp16,bf16 on CUDA, bf16 on a CPU")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--patch", default="16,32,32")
    parser.add_argument("--batch", type=int, default=4, help="patches per task")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--presets", default=None, help="comma-separated (default: every preset)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    precisions = (args.precisions or ("fp16,bf16" if device.type == "cuda" else "bf16")).split(",")
    patch = tuple(int(v) for v in args.patch.split(","))
    presets = args.presets.split(",") if args.presets else omkit.list_presets()
    rows, failed = [], 0
    for precision in precisions:
        for preset in presets:
            try:
                row = run_preset(preset, device, precision, args.width, patch, args.batch, args.steps)
            except Exception as exc:  # one preset's failure is a row; the others still run
                row = {"preset": preset, "precision": precision, "finite": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
            failed += not row["finite"]
            rows.append(row)
            print(f"{precision:5s} {preset:18s} {'ok ' if row['finite'] else 'FAIL'} "
                  f"losses {row.get('losses', '-')} ops {row.get('ops', '-')} {row.get('error', '')}", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"device": str(device), "width": args.width, "patch": list(patch), "batch": args.batch,
                       "rows": rows}, fh, indent=2)
    print(f"mixed_precision_steps: {len(rows) - failed}/{len(rows)} preset steps finite on {device}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
