"""Benchmark registered components (attention plug-ins, a model on a case): time, spread, peak memory, as JSON.

Examples::

    omkit bench attention eca srm --against cga,se                  # the paper's training shape, forward
    omkit bench attention eca --backward --shape inference -o eca.json
    omkit bench case -m runs/cga/model.pt -i BraTS2018/Brats18_CBICA_ABM_1 --inference dense,tiles
    omkit bench attention eca --against cga,se -o new.json --compare old.json

Each row: median seconds per call and the interquartile range over ``--repeats`` calls
(after ``--warmup`` untimed ones), peak memory (host RSS above the start; CUDA
allocator peak on a GPU), parameters and throughput. The JSON file (``-o``) also says
where it ran (machine, CPU, GPU, torch, omkit, date); ``--compare OLD.json`` prints
new/old time ratios of the rows both have.
"""
from __future__ import annotations

import json
from pathlib import Path

from omkit.cli import CLIError
from omkit.cli.options import add_device_argument, add_precision_argument

INFERENCE_CHOICES = ("dense", "tiles", "auto")


def add_arguments(parser):
    sub = parser.add_subparsers(dest="what", required=True, metavar="{attention,case}")
    attention = sub.add_parser("attention", help="attention modules by registered name, on the same features")
    attention.add_argument("names", nargs="+", metavar="NAME", help="registered attention (omkit plugins lists them)")
    attention.add_argument("--against", default="", metavar="NAMES",
                           help="comma-separated attention to time alongside, e.g. cga,se")
    attention.add_argument("--shape", default="paper", metavar="SHAPE",
                           help="paper (20 x 32 x 16 x 32 x 32, the default), inference (4 x 32 x 32 x 64 x 64) "
                                "or B,C,D,H,W")
    attention.add_argument("--backward", action="store_true", help="time forward + backward (default: forward)")
    case = sub.add_parser("case", help="a model file on one case, per inference mode")
    case.add_argument("-m", "--model", required=True, nargs="+", metavar="MODEL",
                      help="model file(s) or run folder (several: an ensemble)")
    case.add_argument("-i", "--input", metavar="CASE_DIR",
                      help="one BraTS case folder (default: a synthetic 96 x 128 x 128 case)")
    case.add_argument("--inference", default="dense,tiles", metavar="MODES",
                      help="comma-separated inference modes among dense, tiles, auto (default dense,tiles)")
    case.add_argument("--tta", action="store_true", help="with test-time mirroring")
    for p in (attention, case):
        add_device_argument(p)
        add_precision_argument(p)
        p.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 10; case: 3)")
        p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 2; case: 1)")
        p.add_argument("-o", "--output", metavar="JSON", help="write the result here (atomically)")
        p.add_argument("--force", action="store_true", help="overwrite an existing --output")
        p.add_argument("--compare", metavar="OLD_JSON", help="print new/old time ratios against a saved result")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _names(text: str) -> list[str]:
    return [n for n in (part.strip() for part in text.split(",")) if n]


def _read_result(path: str) -> dict:
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CLIError(f"--compare {path}: not a readable omkit bench result ({exc})") from None
    if not isinstance(result, dict) or not isinstance(result.get("rows"), list):
        raise CLIError(f"--compare {path}: not an omkit bench result (no rows)")
    return result


def _case(path: str | None):
    """(z-scored image (4, D, H, W), brain mask, what it is) of a case folder or a synthetic case."""
    from omkit.data.preprocess import preprocess_case
    from omkit.data.synthetic import make_case
    from omkit.inference.pipeline import load_for_prediction

    case = load_for_prediction(path) if path else make_case(shape=(96, 128, 128), seed=0)
    pre = preprocess_case(case)
    return pre.image, pre.brain_mask, (path or "synthetic 96 x 128 x 128")


def _print_rows(rows: list[dict]) -> None:
    for row in rows:
        if "error" in row:
            print(f"{row['name']:>20}  cannot run: {row['error']}")
            continue
        memory = f"{row['peak_rss_delta_mb']:.0f} MiB RSS" + (f", {row['peak_cuda_mb']:.0f} MiB CUDA"
                                                              if "peak_cuda_mb" in row else "")
        rate = (f"{row['mvoxels_per_s']:.2f} Mvoxel/s" if "mvoxels_per_s" in row
                else f"{row['brain_mvoxels_per_s']:.3f} Mvoxel/s of brain")
        print(f"{row['name']:>20}  {row['median_s'] * 1e3:10.2f} ms  (IQR {row['iqr_s'] * 1e3:.2f} ms)  "
              f"{rate}  {memory}  {row['parameters']:,} parameters")


def run(args) -> int:
    import torch

    from omkit import bench
    from omkit.devices import check_precision, resolve_device
    from omkit.fileio import atomic_write_text

    if args.output and Path(args.output).exists() and not args.force:
        raise CLIError(f"--output {args.output} exists; pass --force to overwrite it")
    old = _read_result(args.compare) if args.compare else None
    device = resolve_device(args.device)
    try:
        check_precision(args.precision, device)
    except ValueError as exc:
        raise CLIError(f"--precision: {exc}") from None
    progress = not args.no_progress
    if args.what == "attention":
        from omkit.factory import list_attention

        names = list(dict.fromkeys(args.names + _names(args.against)))
        unknown = [n for n in names if n not in list_attention()]
        if unknown:
            raise CLIError(f"attention {', '.join(map(repr, unknown))} is not registered; registered: "
                           f"{', '.join(list_attention())}")
        try:
            shape = bench.parse_shape(args.shape)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        rows = bench.bench_attention(names, shape, args.backward, device, args.precision,
                                     args.repeats if args.repeats is not None else 10,
                                     args.warmup if args.warmup is not None else 2, progress)
        what = {"attention": names, "shape": list(shape), "backward": args.backward}
    else:
        modes = _names(args.inference)
        bad = [m for m in modes if m not in INFERENCE_CHOICES]
        if bad or not modes:
            raise CLIError(f"--inference takes modes among {', '.join(INFERENCE_CHOICES)}, got {args.inference!r}")
        image, mask, source = _case(args.input)
        rows = bench.bench_case(args.model, torch.from_numpy(image), torch.from_numpy(mask), modes, args.tta, device,
                                args.precision, args.repeats if args.repeats is not None else 3,
                                args.warmup if args.warmup is not None else 1, progress)
        what = {"models": args.model, "case": source, "inference": modes, "tta": args.tta}
    result = {"benchmark": args.what, **what, "environment": bench.environment(device), "rows": rows}
    env = result["environment"]
    print(f"omkit bench {args.what} on {env['processor']} ({env['cpus']} CPUs, {env['threads']} threads"
          + (f", {env['gpu']}" if "gpu" in env else "") + f"), torch {env['torch']}, omkit {env['omkit']}, {env['date']}")
    _print_rows(rows)
    if old is not None:
        ratios = bench.compare(result, old)
        print(f"against {args.compare} ({old.get('environment', {}).get('date', 'undated')}): new / old time")
        for r in ratios:
            print(f"{r['name']:>20}  {r['old_s'] * 1e3:10.2f} ms -> {r['new_s'] * 1e3:10.2f} ms   x{r['ratio']:.3f}")
        if not ratios:
            print("  no row in common")
    if args.output:
        atomic_write_text(args.output, json.dumps(result, indent=2) + "\n", force=True)
        print(f"written {args.output}")
    return 0
