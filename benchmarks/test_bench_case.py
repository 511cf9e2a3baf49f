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
  has the Dice between its labels and the plain ones;
* ``omnet_cga-file``: file to file: the case folder read (NIfTI), preprocessed,
  predicted with the paper's tiles, post-processed and the label map written,
  as ``omkit predict`` does for one case (the goal: under 2 s on a GPU at full
  width);
* ``omnet_cga-demo``: the demo's tiles (16 x 32 x 32, kept 8 x 24 x 24: every voxel
  through the backbone about 3.5 times instead of 8);
* ``omnet_cga-dense`` / ``mc3-dense``: dense, window-consistent inference
  (``inference="dense"``): the backbone once per voxel of the brain's region,
  each head's attention pooled over the paper tile of each kept block;
  ``extra_info`` has the Dice between its labels and the paper-tile labels;
* ``omnet_cga-paper+SETTING``: the paper's tiles with one inference setting of
  :class:`omkit.inference.SpeedSettings` or ``--precision``: ``+cudnn`` (cuDNN
  autotuning for the fixed tile shape), ``+channels_last`` (channels-last-3d),
  ``+compile`` (``torch.compile`` with CUDA graphs, ``mode="reduce-overhead"``),
  ``+bf16``, ``+fp16`` (autocast). Each is kept as a default only if its
  speed-up against ``omnet_cga-paper`` on a GPU says so; ``+cudnn``,
  ``+compile`` and ``+fp16`` run on a GPU only, ``+channels_last`` and ``+bf16``
  on a CPU only as a smoke test.

The case: ``OMKIT_BENCH_CASE`` names a case folder of the sample data (e.g. one
the trained models held out), else the first one. ``OMKIT_BENCH_CROP=D,H,W`` cuts
the preprocessed case to that size around its tumor's centre (full-width models on
a CPU: a whole case with the paper's tiles takes many minutes); the file-to-file
row, which reads the whole case, is skipped then.

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
from omkit.inference import (SegmentationPredictor, SpeedSettings, TileSettings, build_postprocessors, dilate,
                             postprocess)
from omkit.inference.runners import TileRunner
from omkit.labels import internal_regions
from omkit.protocol import PATCH_SIZE, TILE_KEEP

from .conftest import SMOKE
from .memory import PeakMemory

# OMKIT_BENCH_WIDTH: the channel width of the random-weight models (default: the paper's 1.0)
WIDTH = 0.125 if SMOKE else float(os.environ.get("OMKIT_BENCH_WIDTH", "1.0"))
PAPER_TILES = dict(size=(8, 16, 16), keep=(4, 8, 8)) if SMOKE else dict(size=PATCH_SIZE, keep=TILE_KEEP)
LARGE_TILES = dict(size=(16, 32, 32), keep=(10, 24, 24)) if SMOKE else dict(size=(32, 64, 64), keep=(22, 52, 52))
DEMO_TILES = dict(size=(8, 16, 16), keep=(4, 12, 12)) if SMOKE else dict(size=PATCH_SIZE, keep=(8, 24, 24))
SW_BATCH = 16 if SMOKE else 32
CROP = tuple(int(v) for v in os.environ["OMKIT_BENCH_CROP"].split(",")) if os.environ.get("OMKIT_BENCH_CROP") else None
SAMPLE_DATA = Path(os.environ.get("OMKIT_SAMPLE_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats2018-sample"))


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory) -> tuple[Path, str]:
    """(case folder, kind): the first real sample case (or ``OMKIT_BENCH_CASE``), else a
    synthetic case written as a BraTS folder."""
    from omkit.data import find_cases, synthetic

    if not SMOKE and SAMPLE_DATA.is_dir():
        cases = find_cases(SAMPLE_DATA)
        wanted = os.environ.get("OMKIT_BENCH_CASE")
        source = next((c for c in cases if c.name == wanted), None) if wanted else cases[0]
        if source is None:
            raise FileNotFoundError(f"OMKIT_BENCH_CASE={wanted}: no such case folder in {SAMPLE_DATA}")
        return source, f"real: {source.name}"
    made = synthetic.make_case(shape=(16, 32, 32) if SMOKE else (155, 240, 240), seed=1)
    return synthetic.write_case(made, tmp_path_factory.mktemp("bench-case")), "synthetic"


@pytest.fixture(scope="module")
def case(case_dir):
    """The preprocessed case with ground truth."""
    from omkit.data import load_case, preprocess_case

    pre = preprocess_case(load_case(case_dir[0]))
    pre.kind = case_dir[1]
    if CROP:
        _crop_around_tumor(pre, CROP)
        pre.kind += f" cropped to {'x'.join(map(str, CROP))}"
    return pre


def _crop_around_tumor(pre, size) -> None:
    """Cut ``pre``'s image, label and brain mask to ``size`` around the tumor's centre
    (the brain's when there is no tumor), in place."""
    focus = pre.label > 0 if pre.label is not None and (pre.label > 0).any() else pre.brain_mask
    centre = [int(np.mean(ix)) for ix in np.nonzero(focus)]
    box = []
    for c, n, full in zip(centre, size, pre.brain_mask.shape):
        start = min(max(c - n // 2, 0), max(full - n, 0))
        box.append(slice(start, start + n))
    box = tuple(box)
    pre.image = np.ascontiguousarray(pre.image[(slice(None), *box)])
    pre.label = None if pre.label is None else np.ascontiguousarray(pre.label[box])
    pre.brain_mask = np.ascontiguousarray(pre.brain_mask[box])


# +SETTING -> (SegmentationPredictor keywords, needs a GPU)
SETTINGS = {
    "cudnn": (dict(speed=SpeedSettings(cudnn_benchmark=True)), True),
    "channels_last": (dict(speed=SpeedSettings(channels_last=True)), False),
    "compile": (dict(speed=SpeedSettings(compile="reduce-overhead")), True),
    "bf16": (dict(precision="bf16"), False),
    "fp16": (dict(precision="fp16"), True),
}
VARIANTS = ["omnet_cga-paper", "omnet_cga-dense", "omnet_cga-demo", "mc3-paper", "mc3-dense", "omnet_cga-large",
            "omnet_cga-monai", "omnet_cga-tta", "omnet_cga-file"] + [
    f"omnet_cga-paper+{name}" for name in SETTINGS]


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

    def runner(self):
        return TileRunner(self.tiles)  # its mean probabilities, MONAI's cutting and blending

    def _run(self, image, tasks, reduce, out_channels, out_dtype, mask, tile_counts):
        from monai.inferers import sliding_window_inference

        t = self.tiles
        # MONAI's scan interval is int(roi * (1 - overlap)): aim just above the stride
        overlap = [1.0 - (s + 1e-3) / r for s, r in zip(t.stride, t.size)]
        channels = [omkit.labels.NUM_CLASSES_TASK[task] for task in tasks]
        probs = sliding_window_inference(
            image[None].to(self.device), t.size, t.batch,
            lambda batch: torch.cat(self.runner().mean_probabilities(self.ensemble(), batch, tasks), 1),
            overlap=overlap, mode="constant", sw_device=self.device, device=self.output_device,
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


@pytest.mark.parametrize("variant", VARIANTS)
def test_case_inference(benchmark, device, case, case_dir, variant, tmp_path):
    preset, rest = variant.split("-", 1)
    tiling, _, setting = rest.partition("+")
    if tiling == "monai":
        pytest.importorskip("monai", reason="MONAI is an optional benchmark dependency")
    extra_kw, gpu_only = SETTINGS.get(setting, ({}, False))
    if setting and device != "cuda" and (gpu_only or not SMOKE):
        pytest.skip(f"+{setting} is a GPU setting" + ("" if gpu_only else " (on a CPU: smoke runs only)"))
    trained_env = "OMKIT_BENCH_CASCADE_MODEL" if preset == "mc3" else "OMKIT_BENCH_ONEPASS_MODEL"
    model, trained = _model(preset, trained_env)
    model = model.to(device)
    geometry = {"large": LARGE_TILES, "demo": DEMO_TILES}.get(tiling, PAPER_TILES)
    tiles = TileSettings(**geometry, batch=SW_BATCH)
    cls = {"monai": MonaiTilingPredictor}.get(tiling, SegmentationPredictor)
    if preset == "mc3" and not trained:
        cls = OracleROICascade
    # every row says how it infers: "dense" rows dense, the others tile by tile (the library's
    # default, "auto", would run them dense)
    extra_kw = {**extra_kw, "inference": "dense" if tiling == "dense" else "tiles"}
    predictor = cls([model], tiles=tiles, device=device, tta=tiling == "tta", **extra_kw)
    if cls is OracleROICascade:
        predictor.gt_whole_tumor = torch.as_tensor(internal_regions(case.label)["WT"])
    steps = build_postprocessors()

    def whole_case():
        result = predictor.predict(case.image, case.brain_mask)
        return result, postprocess(result.labels.numpy(), case.image, steps)

    if tiling == "file" and CROP:
        pytest.skip("OMKIT_BENCH_CROP: the file-to-file row reads the whole case")
    if tiling == "file":  # from the case folder to the written label map, as omkit predict does
        from omkit.inference.pipeline import load_for_prediction, predict_case, write_label_map

        def whole_case():
            loaded = load_for_prediction(case_dir[0])
            result = predict_case(loaded, predictor, steps)
            write_label_map(result.labels, loaded, tmp_path / "labels.nii.gz", loaded.convention, force=True)
            return result, result.labels[result.preprocessed.bbox]  # the brain crop, as the other rows

    benchmark.group = "case"
    with PeakMemory() as peak:
        result, labels = benchmark.pedantic(whole_case, rounds=1 if (SMOKE or device == "cpu") else 3,
                                            warmup_rounds=0 if (SMOKE or device == "cpu") else 1, iterations=1)
    _labels_by_variant[variant] = labels
    benchmark.extra_info.update(peak.as_extra_info())
    benchmark.extra_info.update({
        "case": case.kind, "cropped_shape": list(case.image.shape[1:]), "width": WIDTH, "trained_weights": trained,
        "tiles": result.tile_counts, "tile_size": list(tiles.size), "stride": list(tiles.stride),
        "oracle_roi": cls is OracleROICascade, "tta_flips": len(predictor.flips),
        "setting": setting or None, "precision": predictor.precision, "device": device,
        "inference": predictor.inference,
    })
    if trained:
        benchmark.extra_info["dice_vs_ground_truth"] = _dice(labels, case.label)
    paper = f"{preset}-paper"
    if variant != paper and paper in _labels_by_variant:
        benchmark.extra_info["dice_vs_paper_tiles"] = _dice(labels, _labels_by_variant[paper])
