"""``omkit bench``: benchmark any registered component, as an engineer optimising
against it would, without editing omkit's files.

* :func:`bench_attention`: attention modules by registered name (built-in or plug-in)
  on the same features, forward or forward + backward, at the paper's training shape,
  an inference batch or a given shape;
* :func:`bench_case`: one model file on one case, per inference mode (dense, tiles),
  optionally with test-time mirroring, the whole prediction (preprocessing excluded).

Each row has the median and the spread (interquartile range) of the seconds per call
over ``repeats`` timed calls after ``warmup`` untimed ones, the peak memory (host RSS
above the start, CUDA allocator peak), parameters and throughput. :func:`environment`
says where it ran (machine, CPU, GPU, torch, omkit, date), and :func:`compare`
gives new/old time ratios of two saved results, row by row.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from typing import Callable, Iterable, Sequence

import torch

from omkit.devices import autocast

from .memory import PeakMemory

# (batch, channels, D, H, W) of the named shapes: the paper's training batch (20 patches of
# 16 x 32 x 32 with FusionNet's 32 feature maps) and 4 large inference tiles
SHAPES = {"paper": (20, 32, 16, 32, 32), "inference": (4, 32, 32, 64, 64)}
NUM_CLASSES = 5  # OM-Net's task-1/2 classes: what a guided head is built with


def environment(device: torch.device) -> dict:
    """Where a benchmark ran: machine, CPU count and threads, GPU, torch, omkit, date (UTC)."""
    import sys

    info = {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "omkit": getattr(sys.modules.get("omkit"), "__version__", "unknown"), "device": str(device),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def parse_shape(text: str) -> tuple[int, ...]:
    """``paper``, ``inference`` or ``B,C,D,H,W``; ValueError naming ``--shape`` otherwise."""
    if text in SHAPES:
        return SHAPES[text]
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 5 or min(shape) < 1:
        raise ValueError(f"--shape must be {', '.join(SHAPES)} or B,C,D,H,W of positive integers, got {text!r}")
    return shape


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(call: Callable[[], object], device: torch.device, repeats: int, warmup: int,
               progress: Callable[[], None] | None = None) -> dict:
    """Seconds per ``call()`` (median, interquartile range, min) over ``repeats`` timed calls
    after ``warmup`` untimed ones, and the peak memory over the timed calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        call()
    _sync(device)
    seconds = []
    with PeakMemory() as peak:
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            _sync(device)
            seconds.append(time.perf_counter() - start)
            if progress is not None:
                progress()
    quartiles = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else [seconds[0]] * 3
    row = {"median_s": statistics.median(seconds), "iqr_s": quartiles[2] - quartiles[0], "min_s": min(seconds),
           "repeats": repeats, "peak_rss_delta_mb": round(peak.rss_delta_mb, 1)}
    if peak.cuda_mb is not None:
        row["peak_cuda_mb"] = round(peak.cuda_mb, 1)
    return row


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="call", leave=False, disable=not enabled)


# -- attention -------------------------------------------------------------------------------

def build_attention(name: str, channels: int) -> torch.nn.Module:
    """The registered attention ``name`` as omkit's heads build it."""
    from omkit.factory import attention_class

    cls = attention_class(name)
    return cls(channels, num_classes=NUM_CLASSES) if getattr(cls, "guided", False) else cls(channels)


def attention_step(name: str, shape: Sequence[int], backward: bool = False, device: str | torch.device = "cpu",
                   precision: str = "fp32") -> tuple[Callable[[], torch.Tensor], torch.nn.Module]:
    """``(call, module)``: the registered attention ``name`` built as the heads build it, and
    one call of it (forward, or forward + backward) on seeded features (and guidance) of
    ``shape`` (B, C, D, H, W); what ``omkit bench attention`` and the attention benchmark time."""
    device = torch.device(device)
    b, c, *spatial = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn((b, c, *spatial), generator=g).to(device).requires_grad_(backward)
    guidance = torch.rand((b, 1, *spatial), generator=g).to(device)
    torch.manual_seed(0)
    module = build_attention(name, c).to(device).train(backward)
    guided = bool(getattr(module, "guided", False))

    def call() -> torch.Tensor:
        with torch.set_grad_enabled(backward), autocast(device, precision):
            out = module(x, guidance) if guided else module(x)
        if backward:
            out.float().square().mean().backward()
            module.zero_grad(set_to_none=True)
            x.grad = None
        return out

    return call, module


def bench_attention(names: Sequence[str], shape: Sequence[int] = SHAPES["paper"], backward: bool = False,
                    device: str | torch.device = "cpu", precision: str = "fp32", repeats: int = 10, warmup: int = 2,
                    progress: bool = False) -> list[dict]:
    """One row per attention module: each on the same seeded features (and guidance for
    guided ones) of ``shape`` (B, C, D, H, W) (:func:`attention_step`)."""
    device = torch.device(device)
    b, _, *spatial = shape
    voxels = b * int(torch.tensor(spatial).prod())
    rows = []
    bar = _progress_bar(len(names) * repeats, "omkit bench attention", progress)
    for name in names:
        call, module = attention_step(name, shape, backward, device, precision)
        guided = bool(getattr(module, "guided", False))
        row = {"name": name, "kind": "guided" if guided else "unguided", "shape": list(shape),
               "pass": "forward+backward" if backward else "forward", "precision": precision,
               "parameters": sum(p.numel() for p in module.parameters())}
        row.update(time_calls(call, device, repeats, warmup, bar.update))
        row["mvoxels_per_s"] = round(voxels / row["median_s"] / 1e6, 3)
        rows.append(row)
    bar.close()
    return rows


# -- a whole case --------------------------------------------------------------------------------

def bench_case(models: Sequence[str], image: torch.Tensor, mask: torch.Tensor, inference: Iterable[str] = ("dense", "tiles"),
               tta: bool = False, device: str | torch.device = "cpu", precision: str = "fp32", repeats: int = 3,
               warmup: int = 1, progress: bool = False) -> list[dict]:
    """One row per inference mode: ``models`` (model files, an ensemble when several)
    predicting the z-scored ``image`` (4, D, H, W) within ``mask`` (the brain); the
    mode's default tiles. A mode the models cannot run is a row with its ``error``."""
    from omkit.inference import SegmentationPredictor

    device = torch.device(device)
    rows = []
    modes = list(inference)
    bar = _progress_bar(len(modes) * repeats, "omkit bench case", progress)
    for mode in modes:
        row = {"name": mode + ("+tta" if tta else ""), "inference": mode, "tta": tta, "precision": precision,
               "shape": list(image.shape[1:]), "brain_voxels": int(mask.sum())}
        try:
            predictor = SegmentationPredictor.from_files(list(models), device=device, inference=mode, tta=tta,
                                                         precision=precision)
        except ValueError as exc:
            rows.append({**row, "error": str(exc)})
            bar.update(repeats)
            continue
        row["parameters"] = sum(p.numel() for p in predictor.models[0].parameters())
        row["tiles"] = [list(predictor.tiles.size), list(predictor.tiles.keep)]
        row.update(time_calls(lambda: predictor.predict(image, mask), device, repeats, warmup, bar.update))
        row["brain_mvoxels_per_s"] = round(row["brain_voxels"] / row["median_s"] / 1e6, 4)
        rows.append(row)
    bar.close()
    return rows


# -- saved results -----------------------------------------------------------------------------

def compare(new: dict, old: dict) -> list[dict]:
    """Per row name present in both results: old and new median seconds and new/old."""
    before = {r["name"]: r for r in old.get("rows", []) if "median_s" in r}
    out = []
    for row in new.get("rows", []):
        if row["name"] in before and "median_s" in row:
            was = before[row["name"]]["median_s"]
            out.append({"name": row["name"], "old_s": was, "new_s": row["median_s"], "ratio": row["median_s"] / was})
    return out

