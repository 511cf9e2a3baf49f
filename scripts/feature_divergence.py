"""How far a model's backbone features in a tile (or a training crop) are from its dense
features, by distance to the tile's border: the cause of dense inference's accuracy gap on
models trained on patches (docs/RESULTS.md, "Train as you infer").

    python scripts/feature_divergence.py -m MODEL [-m MODEL ...] CASE_DIR [CASE_DIR ...]
                                         [--tiles 48] [--contexts 0,0,0/4,8,8/8,16,16/16,32,32]

For each model and case: the backbone once over the brain's region (dense, as
``omkit predict --inference dense`` computes it), and alone on ``--tiles`` tiles of the
paper's size (16 x 32 x 32) whose kept centre touches the brain, chosen at random
(seed 0). Per brain voxel the relative difference ``|f_tile - f_dense| / rms(f_dense)`` (rms
over the region's voxels and channels), averaged by the voxel's distance to the nearest
tile face (voxels; 0 = on the border), for the kept centres of 5 x 20 x 20 (the paper's)
and 8 x 24 x 24, and the share of kept-centre voxels whose task-1 class differs (plain
head on both). Then the same for window-consistent training crops
(``omkit.training.windows.WindowGrid``, blocks 2 x 2 x 2 of 8 x 24 x 24) with each
``--contexts`` margin: the divergence over the supervised blocks and over their windows.
Prints Markdown tables.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from omkit.checkpoint import load_model
from omkit.data.features import left_right_axis, network_input
from omkit.data.preprocess import preprocess_case
from omkit.inference.dense import DenseSettings, backbone_features, dense_region, min_divisor
from omkit.inference.pipeline import load_for_prediction
from omkit.inference.sliding import tiles_touching
from omkit.inference.tiling import keep_offset, tile_origins
from omkit.model_card import ModelCard
from omkit.models.blocks import fold_batch_norm
from omkit.ops import gather_tiles
from omkit.protocol import FAST_TILE_KEEP, PATCH_SIZE, TILE_KEEP
from omkit.training.windows import WindowGrid


def network_image(model, pre) -> torch.Tensor:
    """The case's network input (C, D, H, W), with the model's input features."""
    features = ModelCard.of_model(model).input_features
    image = network_input(np.asarray(pre.image, dtype=np.float32), features, axis=left_right_axis(pre.affine))
    return torch.from_numpy(np.ascontiguousarray(image))


def border_distance(size) -> torch.Tensor:
    """(D, H, W) of each voxel's distance to the nearest face of a box of ``size``."""
    axes = [torch.minimum(torch.arange(n), n - 1 - torch.arange(n)) for n in size]
    grid = torch.meshgrid(*axes, indexing="ij")
    return torch.minimum(torch.minimum(grid[0], grid[1]), grid[2])


@torch.no_grad()
def case_divergence(model, case_dir: Path, tiles: int, contexts, rng) -> dict:
    case = load_for_prediction(case_dir)
    pre = preprocess_case(case)
    image = network_image(model, pre)
    folded = fold_batch_norm(model).eval()
    backbone, head = folded.backbone, folded.heads[0]
    divisor = min_divisor(folded)
    mask = torch.from_numpy(pre.brain_mask)
    region = dense_region(mask, PATCH_SIZE, TILE_KEEP, divisor)
    start = torch.tensor([region.start])
    x = gather_tiles(image, start, region.shape)  # zero outside the volume, as dense inference reads
    dense = backbone_features(backbone, x, DenseSettings(), divisor)[0]  # (C, *region)
    rms = dense.pow(2).mean().sqrt()
    dense_class = head(dense[None]).argmax(1)[0]
    brain = gather_tiles(mask[None].float(), start, region.shape)[0, 0] > 0  # the voxels compared
    out = {"tiles": {}, "crops": {}}
    # paper tiles at the tile grid over the brain
    origins = tile_origins(mask.shape, PATCH_SIZE, keep=TILE_KEEP)
    origins = tiles_touching(mask, origins, PATCH_SIZE, TILE_KEEP)
    pick = rng.choice(len(origins), size=min(tiles, len(origins)), replace=False)
    dist = border_distance(PATCH_SIZE)
    sums = torch.zeros(int(dist.max()) + 1)
    counts = torch.zeros_like(sums)
    changed = {TILE_KEEP: [0, 0], FAST_TILE_KEEP: [0, 0]}
    for t in pick.tolist():
        origin = origins[t]
        tile = gather_tiles(image, origin[None], PATCH_SIZE)
        alone = backbone(tile)[0]
        local = [int(o) - s for o, s in zip(origin.tolist(), region.start)]
        box = tuple(slice(lo, lo + n) for lo, n in zip(local, PATCH_SIZE))
        ref = dense[(slice(None),) + box]
        diff = (alone - ref).pow(2).sum(0).sqrt() / (rms * math.sqrt(ref.shape[0]))
        inside = brain[box]
        sums.index_add_(0, dist[inside], diff[inside])
        counts.index_add_(0, dist[inside], torch.ones(int(inside.sum())))
        tile_class = head(alone[None]).argmax(1)[0]
        for keep in changed:
            centre = tuple(slice(o, o + k) for o, k in zip(keep_offset(PATCH_SIZE, keep), keep))
            a, b = tile_class[centre], dense_class[box][centre]
            changed[keep][0] += int((a != b).sum())
            changed[keep][1] += a.numel()
    out["tiles"] = {"by_distance": (sums / counts.clamp_min(1)).tolist(),
                    "changed": {k: c / max(n, 1) for k, (c, n) in changed.items()}}
    # window-consistent training crops centred on brain voxels inside the region
    voxels = mask.nonzero()
    for context in contexts:
        grid = WindowGrid(PATCH_SIZE, FAST_TILE_KEEP, (2, 2, 2), context)
        sup, win = [], []
        for c in rng.choice(len(voxels), size=min(tiles // 2 + 1, len(voxels)), replace=False).tolist():
            centre = voxels[c].tolist()
            lo = [p - s // 2 for p, s in zip(centre, grid.crop)]
            crop = gather_tiles(image, torch.tensor([lo]), grid.crop)
            alone = backbone(crop)[0]
            local = [a - s for a, s in zip(lo, region.start)]
            if min(local) < 0 or any(a + n > r for a, n, r in zip(local, grid.crop, region.shape)):
                continue  # the crop reaches past the dense region: no reference there
            ref = dense[(slice(None),) + tuple(slice(a, a + n) for a, n in zip(local, grid.crop))]
            diff = (alone - ref).pow(2).sum(0).sqrt() / (rms * math.sqrt(ref.shape[0]))
            inside = brain[tuple(slice(a, a + n) for a, n in zip(local, grid.crop))]
            sup.append(diff[grid.supervised_slices][inside[grid.supervised_slices]].mean().item())
            wlo = [g - o for g, o in zip(grid.origin, grid.offset)]
            wins = tuple(slice(a, a + w + (n - 1) * b) for a, w, n, b in zip(wlo, grid.window, grid.blocks, grid.block))
            win.append(diff[wins][inside[wins]].mean().item())
        out["crops"][context] = (float(np.mean(sup)) if sup else float("nan"),
                                 float(np.mean(win)) if win else float("nan"), grid.crop)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", action="append", required=True)
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--tiles", type=int, default=48)
    parser.add_argument("--contexts", default="0,0,0/4,8,8/8,16,16/16,32,32")
    args = parser.parse_args(argv)
    contexts = [tuple(int(v) for v in c.split(",")) for c in args.contexts.split("/")]
    torch.set_grad_enabled(False)
    for path in args.model:
        model, card = load_model(path)
        steps = card.training.get("steps")
        results = [case_divergence(model, Path(c), args.tiles, contexts, np.random.default_rng(0)) for c in args.cases]
        dist = np.mean([r["tiles"]["by_distance"] for r in results], axis=0)
        print(f"\n{path} ({steps} steps, mode {card.train_mode}), {len(results)} cases\n")
        print("| distance to tile border (voxels) | " + " | ".join(str(d) for d in range(len(dist))) + " |")
        print("|---|" + "---:|" * len(dist))
        print("| relative feature difference | " + " | ".join(f"{v:.3f}" for v in dist) + " |")
        for keep in (TILE_KEEP, FAST_TILE_KEEP):
            share = np.mean([r["tiles"]["changed"][keep] for r in results])
            print(f"\ntask-1 class differs (tile vs dense) in kept centres {'x'.join(map(str, keep))}: {share:.4f}")
        print("\n| crop context D,H,W | crop | supervised blocks | their windows |\n|---|---|---:|---:|")
        for context in contexts:
            sup = np.nanmean([r["crops"][context][0] for r in results])
            win = np.nanmean([r["crops"][context][1] for r in results])
            crop = results[0]["crops"][context][2]
            print(f"| {','.join(map(str, context))} | {'x'.join(map(str, crop))} | {sup:.3f} | {win:.3f} |")


if __name__ == "__main__":
    main()
