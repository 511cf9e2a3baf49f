"""The ablation's statistics: Table I lines per row and variant, per-split means, and
paired bootstrap differences between rows (on the cases both held out)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..labels import REGIONS


def _mean(values) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def summarize_results(results: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """Per (row, variant): the Table I line over all held-out cases, and the
    per-split mean Dice lines."""
    table, per_split = [], []
    keys = []
    for res in results:
        for variant in sorted({c["variant"] for c in res["cases"]}, key=lambda v: v != "raw"):
            if (res["row"], variant) not in keys:
                keys.append((res["row"], variant))
    for row, variant in keys:
        mine = [r for r in results if r["row"] == row]
        cases = [c for r in mine for c in r["cases"] if c["variant"] == variant]
        line = {"row": row + ("+p" if variant == "post" else ""),
                "method": mine[0]["title"] + (" + p" if variant == "post" else ""),
                "params_M": round(mine[0]["parameters"] / 1e6, 3), "cases": len({c["case"] for c in cases})}
        for region in REGIONS:
            region_cases = [c for c in cases if c["region"] == region]
            line[f"dice_{region}"] = _mean(c["dice"] for c in region_cases)
        for region in REGIONS:
            values = [c["hd95"] for c in cases if c["region"] == region]
            line[f"hd95_{region}"] = _mean(values)
            line[f"hd95_median_{region}"] = float(np.median(values)) if values else float("nan")
        # the whole tumor's precision and its false-positive components (scores saved before
        # they were measured have none: NaN)
        wt = [c for c in cases if c["region"] == "WT"]
        ppv = [c.get("ppv", float("nan")) for c in wt]
        line["ppv_WT"] = _mean(ppv)
        line["ppv_min_WT"] = float(np.nanmin(ppv)) if ppv and not all(v != v for v in ppv) else float("nan")
        line["fp_components_WT"] = _mean(c.get("fp_components", float("nan")) for c in wt)
        table.append(line)
        for res in mine:
            split_cases = [c for c in res["cases"] if c["variant"] == variant]
            per_split.append({"row": line["row"], "split": res["split"],
                              **{f"dice_{reg}": _mean(c["dice"] for c in split_cases if c["region"] == reg) for reg in REGIONS}})
    return table, per_split


BOOTSTRAP_RESAMPLES = 10_000


def paired_differences(per_case: Sequence[dict], metrics: Sequence[str] = ("dice", "hd95"),
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> list[dict]:
    """Every pair of rows (in their order) compared on the cases both held out: per
    variant, region and metric, the mean of the per-case differences (first row minus
    second) with a 95 % percentile-bootstrap confidence interval over cases
    (``resamples`` resamples, seeded), and whether it excludes zero ("beyond noise").
    Cases where a metric is not finite for either row are left out of that comparison."""
    rng = np.random.default_rng(seed)
    index: dict[tuple, float] = {}
    for c in per_case:
        for metric in metrics:
            if metric in c:
                index[(c["row"], c["variant"], c["region"], metric, c["case"])] = float(c[metric])
    rows = list(dict.fromkeys(c["row"] for c in per_case))
    variants = list(dict.fromkeys(c["variant"] for c in per_case))
    out = []
    for i, first in enumerate(rows):
        for second in rows[i + 1:]:
            for variant in variants:
                for region in REGIONS:
                    for metric in metrics:
                        cases = sorted({k[4] for k in index if k[:4] == (first, variant, region, metric)}
                                       & {k[4] for k in index if k[:4] == (second, variant, region, metric)})
                        diffs = np.array([index[(first, variant, region, metric, c)]
                                          - index[(second, variant, region, metric, c)] for c in cases])
                        diffs = diffs[np.isfinite(diffs)]
                        if diffs.size < 2:
                            continue
                        means = diffs[rng.integers(0, diffs.size, size=(resamples, diffs.size))].mean(axis=1)
                        low, high = np.percentile(means, [2.5, 97.5])
                        out.append({"first": first, "second": second, "variant": variant, "region": region,
                                    "metric": metric, "cases": int(diffs.size), "mean_difference": float(diffs.mean()),
                                    "ci_low": float(low), "ci_high": float(high),
                                    "beyond_noise": bool(low > 0 or high < 0)})
    return out
