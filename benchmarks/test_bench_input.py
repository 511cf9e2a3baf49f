"""The training input pipeline: patches per second delivered to the training loop by
``omkit.training.patches.iterate_steps`` (``TaskPatches.batch_at`` in the main process,
or in ``--workers`` DataLoader processes) from the memory-mapped preprocessing cache, at
the paper's patch (``PATCH_SIZE``) and batch (``BATCH_PER_TASK`` per task, three tasks),
with the paper's samplers; ``augment``: the ``cpu-budget`` recipe's augmentation on top.

The goal is 2,000 patches/s, what one H100 consumes at the paper's patch and batch
(benchmarks/RESULTS.md, "Input pipeline"). ``extra_info``: ``patches_per_s``, ``workers``,
``per_worker_patches_per_s`` and ``workers_for_2000`` (workers at this rate per worker
that 2,000 patches/s needs). Data: the BraTS sample cases when present (a real case's
size), else synthetic cases; smoke runs: two tiny synthetic cases.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

from omkit.protocol import BATCH_PER_TASK as PAPER_BATCH, PATCH_SIZE

from .conftest import SMOKE

GOAL = 2000  # patches/s one H100 consumes at the paper's patch and batch
WORKERS = (0, 1) if SMOKE else (0, 1, 2)
STEPS = 2 if SMOKE else 24
SAMPLE = Path(os.environ.get("OMKIT_SAMPLE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" /
                             "brats2018-sample"))


@pytest.fixture(scope="module")
def training_data(tmp_path_factory):
    """Per augmentation setting, the ``TrainingData`` of the trainer's own ``prepare_data``."""
    from omkit.data import synthetic
    from omkit.training import TrainConfig
    from omkit.training.config import AUGMENT_CPU_BUDGET
    from omkit.training.data import build_augmentation, build_samplers, prepare_data
    from omkit.training.distributed import Processes

    root = tmp_path_factory.mktemp("input")
    if SMOKE or not SAMPLE.is_dir():
        shape = (16, 32, 32) if SMOKE else (144, 176, 144)  # a BraTS brain's crop
        synthetic.make_dataset(root / "data", num_cases=2 if SMOKE else 4, shape=shape, seed=3)
        data = root / "data"
    else:
        data = SAMPLE
    patch = (8, 16, 16) if SMOKE else PATCH_SIZE
    batch = 2 if SMOKE else PAPER_BATCH
    out = {}
    for name, augment in (("plain", ""), ("augment", AUGMENT_CPU_BUDGET)):
        config = TrainConfig(input=str(data), output=str(root / "run"), cache_dir=str(root / "cache"), patch_size=patch,
                             batch_per_task=batch, patches_per_epoch=(100_000,), augment=augment, progress=False)
        samplers = build_samplers(config)
        out[name] = prepare_data(config, samplers, (0, 1, 2), Processes(0, 1, 0, False),
                                 build_augmentation(config)), batch
    return out


@pytest.mark.parametrize("augment", ["plain", "augment"])
@pytest.mark.parametrize("workers", WORKERS)
def test_input_pipeline(benchmark, training_data, augment, workers):
    from omkit.training.patches import iterate_steps

    data, batch = training_data[augment]
    patches_per_step = 3 * batch
    epoch = [0]

    def deliver():
        """STEPS steps of one epoch (a new one each round), the first step excluded (worker start-up)."""
        epoch[0] += 1
        steps = iterate_steps(data.patches, epoch[0], (0, 1, 2), 0, workers)
        next(steps)
        start = time.perf_counter()
        for _ in range(STEPS):
            next(steps)
        elapsed = time.perf_counter() - start
        steps.close()
        return elapsed

    benchmark.group = "input"
    rounds = 1 if SMOKE else 3
    times = benchmark.pedantic(deliver, rounds=rounds, warmup_rounds=0, iterations=1)
    rate = STEPS * patches_per_step / times
    per_worker = rate / max(workers, 1)
    benchmark.extra_info.update(workers=workers, augment=augment, patches_per_step=patches_per_step,
                                patch=list(data.patches.patch_size) if hasattr(data.patches, "patch_size") else None,
                                patches_per_s=round(rate, 1), per_worker_patches_per_s=round(per_worker, 1),
                                workers_for_2000=math.ceil(GOAL / per_worker))
    assert rate > 0
