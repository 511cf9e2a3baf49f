"""Whole-case inference: seconds per case and peak memory, post-processing
included, on one real BraTS sample case (a synthetic case when the samples
are absent, recorded in ``extra_info``).

Group ``case`` (baseline ``omnet_cga-paper``):

* ``omnet_cga-paper``: OM-Net + CGA, one pass, the paper's tiles
  (16 x 32 x 32, stride = kept centre = 5 x 20 x 20), only brain tiles;
* ``mc3-paper``: the MC3 cascade, each next network only on the previous
  task's ROI;
* ``omnet_cga-large``: larger tiles (32 x 64 x 64, kept 22 x 52 x 52: the same
  5-6 voxel context margin as the paper's); ``extra_info`` has the Dice
  between its labels and the paper-tile labels (and vs ground truth when a
  trained model is given);
* ``omnet_cga-monai``: the same network and fusion with MONAI's
  ``sliding_window_inference`` cutting and blending the paper's tiles
  (optional; skipped without MONAI);
* ``omnet_cga-tta``: the paper's tiles with test-time mirroring (all 8 flips
  of D, H, W in one batch per tile block); its speed-up against
  ``omnet_cga-paper`` is the inverse of TTA's cost ratio, and ``extra_info``
  has the Dice between its labels and the plain ones.

The case: ``OMKIT_BENCH_CASE`` names a case folder of the sample data (e.g. one
the trained models held out), else the first one.

Weights: random (seeded) unless ``OMKIT_BENCH_ONEPASS_MODEL`` /
``OMKIT_BENCH_CASCADE_MODEL`` name trained model files. A random task-1
network marks tumor almost everywhere, which would make the cascade run every
network on the whole brain; so with random weights the cascade's task-2 ROI is
the ground-truth whole tumor dilated by 5 voxels (what a well-trained task-1
network gives), and ``extra_info`` lists the tiles each task computed.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import omkit
from omkit.inference import SegmentationPredictor, TileSettings, build_postprocessors, dilate, postprocess
from omkit.labels import internal_regions
from omkit.protocol import PATCH_SIZE, TILE_KEEP

from .conftest import SMOKE
from .memory import PeakMemory

WIDTH = 0.125 if SMOKE else 1.0
PAPER_TILES = dict(size=(8, 16, 16), keep=(4, 8, 8)) if SMOKE else dict(size=PATCH_SIZE, keep=TILE_KEEP)
LARGE_TILES = dict(size=(16, 32, 32), keep=(10, 24, 24)) if SMOKE else dict(size=(32, 64, 64), keep=(22, 52, 52))
SW_BATCH = 16 if SMOKE else 32
SAMPLE_DATA = Path(os.environ.get("OMKIT_SAMPLE_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats2018-sample"))


@pytest.fixture(scope="module")
def case():
    """A preprocessed case with ground truth: the first real sample case, else synthetic."""
    from omkit.data import find_cases, load_case, preprocess_case, synthetic

    if not SMOKE and SAMPLE_DATA.is_dir():
        cases = find_cases(SAMPLE_DATA)
        wanted = os.environ.get("OMKIT_BENCH_CASE")
        source = next((c for c in cases if c.name == wanted), None) if wanted else cases[0]
        if source is None:
            raise FileNotFoundError(f"OMKIT_BENCH_CASE={wanted}: no such case folder in {SAMPLE_DATA}")
        loaded, kind = load_case(source), f"real: {source.name}"
    else:
        loaded, kind = synthetic.make_case(shape=(16, 32, 32) if SMOKE else (155, 240, 240), seed=1), "synthetic"
    pre = preprocess_case(loaded)
    pre.kind = kind
    return pre


def _model(preset: str, env: str):
    from omkit.checkpoint import load_model

    path = os.environ.get(env)
    if path:
        return load_model(path, expect_preset=preset)[0], True
    torch.manual_seed(0)
    return omkit.create_model(preset, width=WIDTH).eval(), False


class OracleROICascade(SegmentationPredictor):
    """The cascade with task 2's ROI from the ground truth (see module docstring)."""

    gt_whole_tumor: torch.Tensor | None = None

    def _task2_roi(self, coarse, brain_mask):
        return dilate(self.gt_whole_tumor.to(coarse.device), self.roi_dilation) & brain_mask.to(coarse.device)


class MonaiTilingPredictor(SegmentationPredictor):
    """The same networks, fusion and post-processing; MONAI cuts and blends the tiles."""

    def _run(self, image, tasks, reduce, out_channels, out_dtype, mask, tile_counts):
        from monai.inferers import sliding_window_inference

        t = self.tiles
        # MONAI's scan interval is int(roi * (1 - overlap)): aim just above the stride
        overlap = [1.0 - (s + 1e-3) / r for s, r in zip(t.stride, t.size)]
        channels = [omkit.labels.NUM_CLASSES_TASK[task] for task in tasks]
        probs = sliding_window_inference(
            image[None].to(self.sw_device), t.size, t.batch,
            lambda batch: torch.cat(self._mean_probabilities(batch, tasks), 1),
            overlap=overlap, mode="constant", sw_device=self.sw_device, device=self.device,
        )
        tile_counts["monai"] = -1  # MONAI computes every tile of the box
        return reduce([p for p in probs.split(channels, 1)])[0].to(out_dtype)


def _dice(a: np.ndarray, b: np.ndarray) -> dict:
    out = {}
    for region, (x, y) in zip(("WT", "TC", "ET"), zip(internal_regions(a).values(), internal_regions(b).values())):
        denom = x.sum() + y.sum()
        out[region] = round(float(2 * (x & y).sum() / denom), 4) if denom else 1.0
    return out


_labels_by_variant: dict[str, np.ndarray] = {}


@pytest.mark.parametrize("variant", ["omnet_cga-paper", "mc3-paper", "omnet_cga-large", "omnet_cga-monai", "omnet_cga-tta"])
def test_case_inference(benchmark, device, case, variant):
    preset, tiling = variant.split("-")
    if tiling == "monai":
        pytest.importorskip("monai", reason="MONAI is an optional benchmark dependency")
    trained_env = "OMKIT_BENCH_CASCADE_MODEL" if preset == "mc3" else "OMKIT_BENCH_ONEPASS_MODEL"
    model, trained = _model(preset, trained_env)
    model = model.to(device)
    tiles = TileSettings(**(LARGE_TILES if tiling == "large" else PAPER_TILES), batch=SW_BATCH)
    cls = {"monai": MonaiTilingPredictor}.get(tiling, SegmentationPredictor)
    if preset == "mc3" and not trained:
        cls = OracleROICascade
    predictor = cls([model], tiles=tiles, sw_device=device, tta=tiling == "tta")
    if cls is OracleROICascade:
        predictor.gt_whole_tumor = torch.as_tensor(internal_regions(case.label)["WT"])
    steps = build_postprocessors()

    def whole_case():
        result = predictor.predict(case.image, case.brain_mask)
        return result, postprocess(result.labels.numpy(), case.image, steps)

    benchmark.group = "case"
    with PeakMemory() as peak:
        result, labels = benchmark.pedantic(whole_case, rounds=1 if (SMOKE or device == "cpu") else 3,
                                            warmup_rounds=0 if (SMOKE or device == "cpu") else 1, iterations=1)
    _labels_by_variant[variant] = labels
    benchmark.extra_info.update(peak.as_extra_info())
    benchmark.extra_info.update({
        "case": case.kind, "cropped_shape": list(case.image.shape[1:]), "width": WIDTH, "trained_weights": trained,
        "tiles": result.tiles, "tile_size": list(tiles.size), "stride": list(tiles.stride),
        "oracle_roi": cls is OracleROICascade, "tta_flips": len(predictor.flips),
    })
    if trained:
        benchmark.extra_info["dice_vs_ground_truth"] = _dice(labels, case.label)
    if variant != "omnet_cga-paper" and "omnet_cga-paper" in _labels_by_variant and preset == "omnet_cga":
        benchmark.extra_info["dice_vs_paper_tiles"] = _dice(labels, _labels_by_variant["omnet_cga-paper"])
