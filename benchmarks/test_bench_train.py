"""One training step per preset at the paper's batch and patch
(``omkit.protocol.BATCH_PER_TASK`` patches per task of ``PATCH_SIZE``, full
width) with the trainer's optimiser: forward of the three tasks through
``forward_tasks`` (with online data transfer for OM-Net presets), the summed
per-task cross-entropy, backward and the SGD step, as the trainer does.

``extra_info``: patches/s and peak memory (host RSS; CUDA allocator peak on a
GPU). Group ``train``; the baseline of the group is ``omnet``. ``omnet_cga+bf16``
and ``omnet_cga+fp16`` take the same step under ``--precision`` bf16 / fp16 (autocast,
with the gradient scaler for fp16) on a GPU; on a CPU ``+bf16`` runs in smoke runs
only (under ``omkit.devices.convolution_guard``, as the trainer's CPU bf16 steps).
The goal of the paper's batch at full width: a peak under 4 GB.

``omnet_cga+windows`` is the window-consistent step (``--train-mode windows``,
``omkit.training.windows``): one crop per task of the default grid (2 x 2 x 2 blocks of
8 x 24 x 24 in 16 x 32 x 32 windows, 4 x 8 x 8 voxels of context: 32 x 72 x 72), the
heads pooled per window; ``extra_info`` adds windows and supervised voxels per second, to
set against the patch step's patches (one window each) and voxels.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import omkit
from omkit.labels import NUM_CLASSES_TASK
from omkit.protocol import BATCH_PER_TASK as PAPER_BATCH, PATCH_SIZE
from omkit.devices import autocast, convolution_guard
from omkit.training import TrainConfig
from omkit.training.optim import build_optimizer, build_scaler
from omkit.training.windows import WindowGrid, forward_tasks

from .conftest import SMOKE
from .memory import PeakMemory

PRESETS = ("omnet", "omnet_cga", "mc3", "omnet_cga+bf16", "omnet_cga+fp16", "omnet_cga+windows")
WIDTH = 0.125 if SMOKE else 1.0
PATCH = (8, 16, 16) if SMOKE else PATCH_SIZE
BATCH_PER_TASK = 2 if SMOKE else PAPER_BATCH
CLASSES = NUM_CLASSES_TASK
GRID = (WindowGrid(PATCH, (4, 8, 8), (2, 2, 2), (2, 4, 4)) if SMOKE
        else WindowGrid(PATCH, TrainConfig.window_block, TrainConfig.window_blocks, TrainConfig.window_context))


def make_windows_step(preset: str, device: str):
    """The window-consistent step: one crop per task, the loss over its supervised blocks."""
    torch.manual_seed(0)
    model = omkit.create_model(preset, width=WIDTH).to(device).train()
    opt = build_optimizer(TrainConfig(device=device), model)
    inputs = [torch.randn(1, 4, *GRID.crop, device=device) for _ in range(3)]
    labels = [torch.randint(0, k, (1, *GRID.supervised), device=device) for k in CLASSES]

    def step():
        opt.zero_grad(set_to_none=True)
        outputs = forward_tasks(model, inputs, None, GRID)
        loss = sum(F.cross_entropy(out, target) for out, target in zip(outputs, labels))
        loss.backward()
        opt.step()
        return loss

    return step, 3


def make_step(preset: str, device: str, precision: str = "fp32"):
    torch.manual_seed(0)
    model = omkit.create_model(preset, width=WIDTH).to(device).train()
    config = TrainConfig(precision=precision, device=device)
    opt = build_optimizer(config, model)  # the paper's SGD, as the trainer builds it
    scaler = build_scaler(config)
    inputs = [torch.randn(BATCH_PER_TASK, 4, *PATCH, device=device) for _ in range(3)]
    labels = [torch.randint(0, k, (BATCH_PER_TASK, *PATCH), device=device) for k in CLASSES]
    transfers = None
    if omkit.get_preset(preset).transfer:
        # a quarter of the task-1 patches also train task 2 (and task 3), as transfer would pick
        picked = torch.arange(0, BATCH_PER_TASK, 4, device=device)
        transfers = {1: [(0, picked)], 2: [(0, picked)]}
        labels[1] = torch.cat([labels[1], labels[0][picked]])
        labels[2] = torch.cat([labels[2], labels[0][picked] % 2])

    def step():
        opt.zero_grad(set_to_none=True)
        with convolution_guard(torch.device(device), precision):
            with autocast(torch.device(device), precision):
                outputs = model.forward_tasks(inputs, transfers)
            loss = sum(F.cross_entropy(out.float(), target) for out, target in zip(outputs, labels))
            scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    patches = sum(t.shape[0] for t in labels)
    return step, patches


@pytest.mark.parametrize("preset", PRESETS)
def test_train_step(benchmark, run_benchmark, device, preset):
    name, _, precision = preset.partition("+")
    if precision and device != "cuda" and (precision == "fp16" or not SMOKE):
        pytest.skip(f"--precision {precision} is measured on a GPU" + ("" if precision == "fp16" else
                                                                         " (on a CPU: smoke runs only)"))
    windows = precision == "windows"
    step, patches = make_windows_step(name, device) if windows else make_step(name, device, precision or "fp32")
    precision = "" if windows else precision
    step()  # first step allocates optimiser state
    with PeakMemory() as peak:
        run_benchmark(step, rounds=3, group="train", preset=preset, width=WIDTH, patches_per_step=patches,
                      batch_per_task=BATCH_PER_TASK, patch=list(PATCH), precision=precision or "fp32")
    benchmark.extra_info.update(peak.as_extra_info())
    mean = benchmark.stats.stats.mean if benchmark.stats else None
    if mean:
        benchmark.extra_info["patches_per_s"] = round(patches / mean, 2)
        # a patch is one window; a crop supervises prod(GRID.blocks) windows' kept centres
        per_sample = GRID.blocks[0] * GRID.blocks[1] * GRID.blocks[2] if windows else 1
        voxels = math.prod(GRID.supervised) if windows else math.prod(PATCH)
        benchmark.extra_info["windows_per_s"] = round(patches * per_sample / mean, 2)
        benchmark.extra_info["supervised_voxels_per_s"] = round(patches * voxels / mean)
