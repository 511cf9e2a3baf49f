"""Paired per-case differences between rows of different ``omkit ablation`` studies run on
the same cases and folds (e.g. a row trained with an option against the same row without
it), with the studies' own bootstrap intervals (``omkit.ablation.paired_differences``),
over the cases both have scored.

    python scripts/compare_studies.py STUDY_A:ROW[=NAME] STUDY_B:ROW[=NAME]
                                      [--metrics dice,ppv,sensitivity,hd95,fp_components]

Prints, per variant (raw, post) and metric, the mean of the per-case differences (A minus
B) with its 95 % interval, bold where the interval excludes zero, and each side's mean.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from omkit.ablation import paired_differences, saved_row_results
from omkit.labels import REGIONS


def read_row(spec: str) -> tuple[str, list[dict]]:
    """(name, per-case records) of ``STUDY:ROW[=NAME]``, from each scored split's saved
    result (so a study still running, or stopped, compares on the splits it has)."""
    study, _, rest = spec.rpartition(":")
    row, _, name = rest.partition("=")
    results = saved_row_results(study, row)
    if not results:
        raise SystemExit(f"{Path(study) / 'runs' / row}: no scored split (scores.json); no row {row!r} to compare")
    name = name or f"{Path(study).name}/{row}"
    return name, [{**case, "row": name, "split": r["split"]} for r in results for case in r["cases"]]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--metrics", default="dice,ppv,sensitivity,hd95,fp_components")
    args = parser.parse_args(argv)
    metrics = [m for m in args.metrics.split(",") if m]
    (a, first), (b, second) = read_row(args.first), read_row(args.second)
    shared = {r["case"] for r in first} & {r["case"] for r in second}
    if not shared:
        raise SystemExit(f"{a} and {b} have no held-out case in common")
    first, second = ([r for r in rows if r["case"] in shared] for rows in (first, second))
    records = first + second
    pairs = paired_differences(records, metrics=metrics)
    for variant in dict.fromkeys(r["variant"] for r in records):
        print(f"\n{a} minus {b}, {variant} maps ({len(shared)} cases both scored):\n")
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
