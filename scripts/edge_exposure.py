"""How much of the brain's edge does each task's sampler show the network? Per sampler
spec, the share of training-patch voxels that lie in the band under the brain's surface
(depth <= ``--band`` voxels), against the share of brain voxels in that band: what task 1
decides at inference.

    python scripts/edge_exposure.py DATA [--samplers "brain;brain:1+dilated_tumor:1;dilated_tumor"]
                                         [--patch-size 16,32,32] [--draws 4000] [--band 8]

Depth: distance in voxels to the nearest voxel outside the brain mask (every modality
zero), as ``scripts/false_tumor_report.py`` measures it. Patch voxels outside the
volume count as outside the brain.
"""
from __future__ import annotations

import argparse

import numpy as np

from omkit.data import find_cases
from omkit.data.brats import load_case
from omkit.data.patches import patch_bounds
from omkit.data.preprocess import preprocess_case
from omkit.data.sampler_specs import parse_sampler_spec
from omkit.data.sampling import region_indices
from omkit.labels import TUMOR_CLASSES
from omkit.morphology import depth_below_surface
from omkit.plugin_manager import get_plugins


def patch_shares(centres: np.ndarray, band: np.ndarray, brain: np.ndarray, tumor: np.ndarray,
                 size: tuple[int, int, int]) -> np.ndarray:
    """Per centre ``(z, y, x)``: (band, brain, tumor) voxels of its patch over the patch's size
    (the patch's bounds are training's, ``omkit.data.patches.patch_bounds``)."""
    cumulative = [np.pad(m.astype(np.int64), ((1, 0),) * 3).cumsum(0).cumsum(1).cumsum(2) for m in (band, brain, tumor)]
    start, stop = patch_bounds(centres, size)  # broadcasts over the (N, 3) centres
    lo, hi = np.clip(start, 0, np.array(band.shape)), np.clip(stop, 0, np.array(band.shape))
    out = np.zeros((len(centres), 3))
    for k, c in enumerate(cumulative):
        (z0, y0, x0), (z1, y1, x1) = lo.T, hi.T
        out[:, k] = (c[z1, y1, x1] - c[z0, y1, x1] - c[z1, y0, x1] - c[z1, y1, x0]
                     + c[z0, y0, x1] + c[z0, y1, x0] + c[z1, y0, x0] - c[z0, y0, x0])
    return out / float(np.prod(size))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--samplers", default="brain;brain:1+dilated_tumor:1;dilated_tumor",
                        help="sampler specs separated by ';'")
    parser.add_argument("--patch-size", default="16,32,32")
    parser.add_argument("--draws", type=int, default=4000, help="patch centres per sampler")
    parser.add_argument("--band", type=float, default=8.0, help="depth of the edge band in voxels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    size = tuple(int(s) for s in args.patch_size.split(","))
    registry = get_plugins().registry("sampler")
    specs = [s.strip() for s in args.samplers.split(";") if s.strip()]
    samplers = [parse_sampler_spec(spec, registry) for spec in specs]

    cases = [preprocess_case(load_case(d, with_label=True)) for d in find_cases(args.data)]
    bands, brains, tumors, band_brain = [], [], [], []
    for pre in cases:
        depth = depth_below_surface(pre.brain_mask)
        bands.append(pre.brain_mask & (depth <= args.band))
        brains.append(pre.brain_mask)
        tumors.append(np.isin(pre.label, TUMOR_CLASSES))
        band_brain.append((bands[-1].sum(), pre.brain_mask.sum(), (bands[-1] & tumors[-1]).sum()))
    band_total, brain_total, band_tumor = np.sum(band_brain, axis=0)
    print(f"{len(cases)} cases; the band (depth <= {args.band:g} voxels) holds {band_total / brain_total:.1%} "
          f"of the brain's voxels and {band_tumor / max(sum(t.sum() for t in tumors), 1):.1%} of the tumor's: "
          "what task 1 decides at inference")
    shapes = [p.brain_mask.shape for p in cases]
    rng = np.random.default_rng(args.seed)
    print("| sampler | patch voxels in the band | in the brain | tumor | patches with band voxels | tumor-free patches |")
    print("|---|---:|---:|---:|---:|---:|")
    for spec, sampler in zip(specs, samplers):
        regions = [region_indices(sampler, pre) for pre in cases]
        drawn = sampler.draw(regions, shapes, args.draws, rng)
        shares = []
        for case in np.unique(drawn[:, 0]):
            rows = drawn[drawn[:, 0] == case]
            shares.append(patch_shares(rows[:, 1:], bands[case], brains[case], tumors[case], size))
        shares = np.concatenate(shares)
        print(f"| `{spec}` | {shares[:, 0].mean():.1%} | {shares[:, 1].mean():.1%} | {shares[:, 2].mean():.1%} "
              f"| {np.mean(shares[:, 0] > 0):.1%} | {np.mean(shares[:, 2] == 0):.1%} |")


if __name__ == "__main__":
    main()
