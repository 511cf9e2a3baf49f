"""Paired per-case differences between rows of different ``omkit ablation`` studies run on
the same cases and folds (e.g. a row trained with an option against the same row without
it), with the studies' own bootstrap intervals (``omkit.ablation.paired_differences``).

    python scripts/compare_studies.py STUDY_A:ROW[=NAME] STUDY_B:ROW[=NAME]
                                      [--metrics dice,ppv,sensitivity,hd95,fp_components]

Prints, per variant (raw, post) and metric, the mean of the per-case differences (A minus
B) with its 95 % interval, bold where the interval excludes zero, and each side's mean.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from omkit.ablation import paired_differences
from omkit.labels import REGIONS


def read_row(spec: str) -> tuple[str, list[dict]]:
    """(name, per-case records) of ``STUDY:ROW[=NAME]``."""
    study, _, rest = spec.rpartition(":")
    row, _, name = rest.partition("=")
    path = Path(study) / "ablation_per_case.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: no per-case table (run omkit ablation on {study} first)")
    with path.open(newline="") as fh:
        records = [r for r in csv.DictReader(fh) if r["row"] == row]
    if not records:
        raise SystemExit(f"{path}: no row {row!r}")
    name = name or f"{Path(study).name}/{row}"
    return name, [{**r, "row": name} for r in records]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--metrics", default="dice,ppv,sensitivity,hd95,fp_components")
    args = parser.parse_args(argv)
    metrics = [m for m in args.metrics.split(",") if m]
    (a, first), (b, second) = read_row(args.first), read_row(args.second)
    records = first + second
    pairs = paired_differences(records, metrics=metrics)
    for variant in dict.fromkeys(r["variant"] for r in records):
        print(f"\n{a} minus {b}, {variant} maps ({len({r['case'] for r in first})} cases):\n")
        print("| metric | region | mean A | mean B | A - B [95 % CI] |")
        print("|---|---|---:|---:|---:|")
        for metric in metrics:
            for region in REGIONS:
                hit = [p for p in pairs if (p["variant"], p["region"], p["metric"]) == (variant, region, metric)]
                if not hit:
                    continue
                p = hit[0]

                def mean(rs):
                    values = [float(r[metric]) for r in rs if r["variant"] == variant and r["region"] == region]
                    values = np.array(values)[np.isfinite(values)]
                    return float(values.mean()) if values.size else float("nan")

                text = f"{p['mean_difference']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]"
                print(f"| {metric} | {region} | {mean(first):.3f} | {mean(second):.3f} | "
                      f"{'**' + text + '**' if p['beyond_noise'] else text} |")


if __name__ == "__main__":
    main()
