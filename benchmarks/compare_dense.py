"""Dense, window-consistent inference against the paper's tiles with the same models:
per-region Dice against ground truth of each way, and their agreement (Dice between the
two label maps) per case. Reads a cross-validated study of ``omkit ablation --folds K``
(each fold's model predicts only the cases it held out).

    python benchmarks/compare_dense.py STUDY DATA [--row omnet_cga] [--out table.md]

Prints a markdown table (one line per held-out case, then the means) and the seconds
per case of each way; ``--out`` also writes it. Both ways post-process with the
default steps, like ``omkit predict``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REGIONS = ("WT", "TC", "ET")


def _agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    from omkit.labels import internal_regions

    out = {}
    for region, x, y in zip(REGIONS, internal_regions(a).values(), internal_regions(b).values()):
        denom = int(x.sum()) + int(y.sum())
        out[region] = 2.0 * int((x & y).sum()) / denom if denom else 1.0
    return out


def compare(study: Path, data: Path, row: str, device: str = "cpu") -> tuple[list[dict], dict]:
    from omkit.data import find_cases
    from omkit.inference import SegmentationPredictor, build_postprocessors
    from omkit.inference.pipeline import load_for_prediction, predict_case
    from omkit.metrics import case_metrics_internal

    cases = {c.name: c for c in find_cases(data)}
    steps = build_postprocessors()
    rows, seconds = [], {"tiles": [], "dense": []}
    for fold_dir in sorted((study / "runs" / row).glob("fold*")):
        scores = json.loads((fold_dir / "scores.json").read_text(encoding="utf-8"))
        model = fold_dir / "model.pt"
        predictors = {way: SegmentationPredictor.from_files([str(model)], device=device, inference=way)
                      for way in ("tiles", "dense")}
        for case_id in scores["held_out"]:
            case = load_for_prediction(cases[case_id], with_label=True)
            labels = {}
            for way, predictor in predictors.items():
                started = time.perf_counter()
                labels[way] = predict_case(case, predictor, steps).labels
                seconds[way].append(time.perf_counter() - started)
            row_out = {"case": case_id, "fold": fold_dir.name}
            for way, lab in labels.items():
                metrics = case_metrics_internal(lab, case.label, case.spacing)
                for region in REGIONS:
                    row_out[f"{way}_{region}"] = metrics[region]["dice"]
            for region, value in _agreement(labels["tiles"], labels["dense"]).items():
                row_out[f"agree_{region}"] = value
            rows.append(row_out)
            print(f"{case_id}: " + ", ".join(f"{k} {v:.3f}" for k, v in row_out.items() if isinstance(v, float)),
                  flush=True)
    return rows, {way: float(np.mean(v)) for way, v in seconds.items() if v}


def markdown(rows: list[dict], seconds: dict) -> str:
    cols = [f"{way}_{r}" for way in ("tiles", "dense") for r in REGIONS] + [f"agree_{r}" for r in REGIONS]
    head = ["case", "fold"] + [c.replace("_", " ") for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["case"], r["fold"]] + [f"{r[c]:.3f}" for c in cols]) + " |")
    means = [float(np.mean([r[c] for r in rows])) for c in cols]
    lines.append("| **mean** | | " + " | ".join(f"**{m:.3f}**" for m in means) + " |")
    from omkit.ablation import paired_differences

    per_case = [{"row": way, "variant": "post", "region": r, "case": x["case"], "dice": x[f"{way}_{r}"]}
                for x in rows for way in ("dense", "tiles") for r in REGIONS]
    pairs = {p["region"]: p for p in paired_differences(per_case, metrics=("dice",))}
    lines.append("")
    lines.append("Dice difference dense - tiles, mean over cases [95 % bootstrap interval]: " + ", ".join(
        f"{r} {pairs[r]['mean_difference']:+.3f} [{pairs[r]['ci_low']:+.3f}, {pairs[r]['ci_high']:+.3f}]"
        for r in REGIONS if r in pairs)
                 + f"; seconds per case (predict + post-process): tiles {seconds.get('tiles', 0):.1f}, "
                   f"dense {seconds.get('dense', 0):.1f}.")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--row", default="omnet_cga")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows, seconds = compare(args.study, args.data, args.row, args.device)
    table = markdown(rows, seconds)
    print(table)
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
