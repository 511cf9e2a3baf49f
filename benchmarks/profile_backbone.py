"""Backbone throughput on a CPU by input shape, memory format and threads, with a
torch.profiler breakdown: why larger tiles were not faster per voxel here.

    python benchmarks/profile_backbone.py [--width 0.25] [--threads 2] [--profile]

Prints, for each input (batch x D x H x W), milliseconds per million voxels of the
OM-Net + CGA network's forward pass (backbone and heads, eval mode, no grad), in the
default (contiguous) and channels-last-3d memory formats; with ``--profile`` the top
operators of the largest input. Not a pytest suite: it answers a question, its output
goes to benchmarks/RESULTS.md with the machine and date.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import omkit

SHAPES = [  # (batch, D, H, W)
    (16, 16, 32, 32),   # the paper's / demo's tiles, one batch
    (64, 16, 32, 32),   # more of them per call
    (1, 32, 64, 64),    # the "large" tile
    (4, 32, 64, 64),
    (1, 64, 128, 128),  # a dense block
    (1, 144, 176, 144),  # a whole brain crop (dense inference in one call)
]


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-voxels", type=int, default=6_000_000, help="skip larger inputs")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = omkit.create_model("omnet_cga", width=args.width).eval()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, width {args.width}, "
          f"mkldnn {torch.backends.mkldnn.is_available()}")
    print(f"{'input':>22} {'Mvox':>6} {'contiguous ms/Mvox':>19} {'channels_last ms/Mvox':>22}")
    largest = None
    for shape in SHAPES:
        voxels = shape[0] * shape[1] * shape[2] * shape[3]
        if voxels > args.max_voxels:
            continue
        x = torch.randn(shape[0], 4, *shape[1:])
        row = []
        for fmt in (torch.contiguous_format, torch.channels_last_3d):
            model.to(memory_format=fmt)
            xf = x.contiguous(memory_format=fmt)
            with torch.inference_mode():
                seconds = _time(lambda: model(xf), args.repeats)
            row.append(seconds / voxels * 1e9)  # ms per million voxels
        model.to(memory_format=torch.contiguous_format)
        print(f"{'x'.join(map(str, shape)):>22} {voxels / 1e6:6.2f} {row[0]:19.1f} {row[1]:22.1f}")
        largest = x
    if args.profile and largest is not None:
        from torch.profiler import ProfilerActivity, profile

        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            model(largest)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
