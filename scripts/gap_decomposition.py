"""Which part of dense inference's accuracy gap on a patch-trained model comes from the
backbone's context, and which from the heads (docs/RESULTS.md, "Train as you infer").

    python scripts/gap_decomposition.py STUDY DATA [--row omnet_cga] [--out table.md]
                                        [--tiles-study S --dense-study S]

Reads a cross-validated study of ``omkit ablation --folds K`` (each fold's model predicts
only the cases it held out) and predicts each held-out case three ways, raw labels (no
post-processing), the paper's tiles (16 x 32 x 32 keeping 5 x 20 x 20):

* ``tiles``: every tile through the whole network alone (the paper's inference);
* ``dense features, tile heads``: the backbone once over the whole volume (as dense
  inference runs it), each tile's features cut from that, and the heads, their attention
  pooling and the cross-task guidance run per tile exactly as in ``tiles``;
* ``dense``: dense inference (``--inference dense``): the same backbone features, the
  heads window-consistent over the same tiles.

``tiles`` -> ``dense features, tile heads`` changes only the backbone's context;
``dense features, tile heads`` -> ``dense`` only the heads' 3x3x3 conv on each window's
one-voxel shell (real neighbours instead of zero padding): the attention windows and the
guidance are the tiles' in both. Prints per-case Dice and the mean differences with 95 %
bootstrap intervals (paired by case, 10,000 resamples). With ``--tiles-study`` and
``--dense-study`` (studies of the same models scored with ``--inference tiles`` with the
paper's tiles, and ``--inference dense``), their raw per-case Dice is read from them and
only the middle way is predicted.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

REGIONS = ("WT", "TC", "ET")
PAPER = dict(size=(16, 32, 32), keep=(5, 20, 20))


class DenseFeatureLookup(nn.Module):
    """A backbone that returns, for each tile, the dense features of the volume at the
    tile's place. The tile's place is read from three coordinate channels appended to the
    image (volume index + 1; 0 where the tile reaches past the volume)."""

    def __init__(self, features: torch.Tensor, out_channels: int, min_divisor: int):
        super().__init__()
        self.features, self.out_channels, self.min_divisor = features, out_channels, min_divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coords, size = x[:, -3:], x.shape[2:]
        out = x.new_zeros((x.shape[0], self.features.shape[0], *size))
        for b in range(x.shape[0]):
            inside = (coords[b, 0] > 0).nonzero()
            if not len(inside):
                continue
            local = inside[0].tolist()
            origin = [int(coords[b, a][tuple(local)].item()) - 1 - local[a] for a in range(3)]
            src = tuple(slice(max(o, 0), min(o + s, n)) for o, s, n in zip(origin, size, self.features.shape[1:]))
            dst = tuple(slice(s.start - o, s.stop - o) for s, o in zip(src, origin))
            out[(b, slice(None)) + dst] = self.features[(slice(None),) + src]
        return out


def dense_features(model, image: torch.Tensor) -> torch.Tensor:
    """The backbone's features over the whole volume ``image (C, D, H, W)`` (zero padded at
    the end to the backbone's divisor), as dense inference computes them."""
    from omkit.inference.dense import DenseSettings, backbone_features, min_divisor
    from omkit.models.blocks import fold_batch_norm

    divisor = min_divisor(model)
    shape = [-(-n // divisor) * divisor for n in image.shape[1:]]
    x = image.new_zeros((1, image.shape[0], *shape))
    x[(0, slice(None)) + tuple(slice(0, n) for n in image.shape[1:])] = image
    feats = backbone_features(fold_batch_norm(model).backbone, x, DenseSettings(), divisor)[0]
    return feats[(slice(None),) + tuple(slice(0, n) for n in image.shape[1:])]


@torch.no_grad()
def three_ways(model, pre, ways=("tiles", "dense", "dense features, tile heads")) -> dict[str, np.ndarray]:
    import copy

    from omkit.inference import SegmentationPredictor, TileSettings

    image = torch.from_numpy(np.ascontiguousarray(pre.image, dtype=np.float32))
    mask = torch.from_numpy(np.asarray(pre.brain_mask, dtype=bool))
    tiles = TileSettings(**PAPER)
    out = {way: SegmentationPredictor([model], tiles=tiles, inference=way).predict(image, mask).labels
           for way in ("tiles", "dense") if way in ways}
    hybrid = copy.deepcopy(model)
    hybrid.backbone = DenseFeatureLookup(dense_features(model, image), model.backbone.out_channels,
                                         model.backbone.min_divisor)
    coords = torch.stack(torch.meshgrid(*(torch.arange(1, n + 1, dtype=torch.float32) for n in image.shape[1:]),
                                        indexing="ij"))
    out["dense features, tile heads"] = SegmentationPredictor([hybrid], tiles=tiles, inference="tiles").predict(
        torch.cat([image, coords]), mask).labels
    return {k: v.numpy() for k, v in out.items()}


def bootstrap(diffs: np.ndarray, rounds: int = 10_000) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    means = diffs[rng.integers(0, len(diffs), (rounds, len(diffs)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main(argv=None) -> None:
    from omkit.checkpoint import load_model
    from omkit.data import find_cases
    from omkit.data.preprocess import preprocess_case
    from omkit.inference.pipeline import load_for_prediction
    from omkit.metrics import case_metrics_internal

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("data")
    parser.add_argument("--row", default="omnet_cga")
    parser.add_argument("--out", default=None)
    parser.add_argument("--tiles-study", default=None)
    parser.add_argument("--dense-study", default=None)
    args = parser.parse_args(argv)
    saved = {}
    for way, study in (("tiles", args.tiles_study), ("dense", args.dense_study)):
        for split in sorted((Path(study) / "runs" / args.row).iterdir()) if study else []:
            for c in json.loads((split / "scores.json").read_text())["cases"]:
                if c["variant"] == "raw":
                    saved.setdefault((c["case"], way), {})[c["region"]] = c["dice"]
    cases = {c.name: c for c in find_cases(args.data)}
    rows = []
    for split in sorted((Path(args.study) / "runs" / args.row).iterdir()):
        scores = json.loads((split / "scores.json").read_text())
        model, _ = load_model(split / "model.pt")
        for name in scores["held_out"]:
            case = load_for_prediction(cases[name], with_label=True)
            pre = preprocess_case(case)
            reuse = [w for w in ("tiles", "dense") if (name, w) in saved]
            for way in reuse:
                rows.append({"case": name, "way": way, **saved[(name, way)]})
            ways = [w for w in ("tiles", "dense", "dense features, tile heads") if w not in reuse]
            for way, labels in three_ways(model, pre, ways).items():
                dice = case_metrics_internal(labels, pre.label, pre.spacing)
                rows.append({"case": name, "way": way, **{r: dice[r]["dice"] for r in REGIONS}})
            print(name, {r["way"]: round(r["WT"], 3) for r in rows if r["case"] == name}, flush=True)
    ways = ["tiles", "dense features, tile heads", "dense"]
    lines = ["| way | Dice WT | Dice TC | Dice ET |", "|---|---:|---:|---:|"]
    for way in ways:
        sel = [r for r in rows if r["way"] == way]
        lines.append(f"| {way} | " + " | ".join(f"{np.mean([r[g] for r in sel]):.3f}" for g in REGIONS) + " |")
    lines += ["", "| step | WT | TC | ET |", "|---|---:|---:|---:|"]
    for a, b, what in (("tiles", "dense features, tile heads", "backbone context"),
                       ("dense features, tile heads", "dense", "heads' window shell"),
                       ("tiles", "dense", "all of it")):
        cells = []
        for g in REGIONS:
            d = np.array([next(r[g] for r in rows if r["case"] == c and r["way"] == b)
                          - next(r[g] for r in rows if r["case"] == c and r["way"] == a)
                          for c in dict.fromkeys(r["case"] for r in rows)])
            lo, hi = bootstrap(d)
            cells.append(f"{d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]")
        lines.append(f"| {what} ({b} minus {a}) | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
