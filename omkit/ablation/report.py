"""The ablation's tables: Table I lines per row and variant, per-split means, paired
bootstrap differences between rows, and the CSV and Markdown the study writes."""
from __future__ import annotations

import csv
import io
import json
import random
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


def _csv(rows: Sequence[dict]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


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


def paired_lines(pairs: Sequence[dict]) -> list[str]:
    """Markdown lines of :func:`paired_differences` for Dice (post-processed maps when there are)."""
    dice = [p for p in pairs if p["metric"] == "dice"]
    if not dice:
        return []
    variant = "post" if any(p["variant"] == "post" for p in dice) else "raw"
    lines = ["", f"Paired differences of Dice ({'post-processed' if variant == 'post' else 'raw'} maps), first row minus "
             "second, over the cases both held out: mean and 95 % bootstrap confidence interval "
             f"({BOOTSTRAP_RESAMPLES} resamples); **bold** where the interval excludes zero:", "",
             "| first | second | cases | WT | TC | ET |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    pairs_seen = list(dict.fromkeys((p["first"], p["second"]) for p in dice if p["variant"] == variant))
    for first, second in pairs_seen:
        cells, count = [], 0
        for region in REGIONS:
            hit = [p for p in dice if (p["first"], p["second"], p["variant"], p["region"]) == (first, second, variant, region)]
            if not hit:
                cells.append("")
                continue
            p = hit[0]
            count = max(count, p["cases"])
            text = f"{p['mean_difference']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]"
            cells.append(f"**{text}**" if p["beyond_noise"] else text)
        lines.append(f"| {first} | {second} | {count} | " + " | ".join(cells) + " |")
    return lines


def per_case_lines(per_case: Sequence[dict]) -> list[str]:
    """Markdown lines: per held-out case and (row, variant), the whole tumor's Dice,
    precision and false-positive components (components touching no true tumor), so the
    false-tumor failure mode stays visible next to the means."""
    wt = [c for c in per_case if c.get("region") == "WT"]
    if not wt:
        return []
    columns = list(dict.fromkeys((c["row"], c["variant"]) for c in wt))
    cases = sorted({c["case"] for c in wt})
    lines = ["", "Whole tumor per held-out case: Dice / precision / false-positive components:", "",
             "| Case | " + " | ".join(f"{row}{'+p' if variant == 'post' else ''}" for row, variant in columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    for case in cases:
        cells = []
        for row, variant in columns:
            hit = [c for c in wt if c["case"] == case and c["row"] == row and c["variant"] == variant]
            if not hit:
                cells.append("")
                continue
            c = hit[0]
            fp = c.get("fp_components")
            cells.append(f"{c['dice']:.3f} / {c.get('ppv', float('nan')):.2f} / {'n/a' if fp is None else fp}")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return lines


def markdown_table(table: Sequence[dict], per_split: Sequence[dict], config,
                   per_case: Sequence[dict] | None = None, inference: dict[str, str] | None = None) -> str:
    """The study's Markdown report; ``inference``: per "row split", the inference each ran
    and why (``SegmentationPredictor.inference_note``)."""
    def f(v, digits=3):
        return "n/a" if v != v else f"{v:.{digits}f}"

    lines = [
        "| Method | Params (M) | Dice WT | Dice TC | Dice ET | HD95 WT | HD95 TC | HD95 ET "
        "| median HD95 WT | median HD95 TC | median HD95 ET | WT precision (mean / min) | false WT components per case |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in table:
        lines.append(f"| {t['method']} | {t['params_M']:.3f} | {f(t['dice_WT'])} | {f(t['dice_TC'])} | {f(t['dice_ET'])} | "
                     f"{f(t['hd95_WT'], 1)} | {f(t['hd95_TC'], 1)} | {f(t['hd95_ET'], 1)} | "
                     f"{f(t['hd95_median_WT'], 1)} | {f(t['hd95_median_TC'], 1)} | {f(t['hd95_median_ET'], 1)} | "
                     f"{f(t['ppv_WT'], 2)} / {f(t['ppv_min_WT'], 2)} | {f(t['fp_components_WT'], 1)} |")
    splits = sorted({p["split"] for p in per_split})
    per = ["", "Mean Dice per split (WT / TC / ET):", "",
           "| Row | " + " | ".join(splits) + " |", "| --- |" + " ---: |" * len(splits)]
    for row in dict.fromkeys(p["row"] for p in per_split):
        cells = []
        for s in splits:
            match = [p for p in per_split if p["row"] == row and p["split"] == s]
            cells.append(" / ".join(f(match[0][f"dice_{r}"], 2) for r in REGIONS) if match else "")
        per.append(f"| {row} | " + " | ".join(cells) + " |")
    per += paired_lines(paired_differences(per_case or []))
    per += per_case_lines(per_case or [])
    protocol = (f"{config.folds}-fold cross-validation" if config.folds
                else f"hold-out of {config.val_cases} cases" + (f", {config.ensemble}-fold ensemble" if config.ensemble else ""))
    protocol += {"dense": ", dense inference", "tiles": ", overlap-tile inference",
                 "auto": ", inference chosen per model (auto: dense for models trained window-consistently, "
                         "else tiles)"}[config.inference]
    head = [f"Protocol: {protocol}; HD95 in mm (mean and median over held-out cases); budget: {json.dumps(config.train)}.", ""]
    if inference:
        head += ["Inference per row and split:", ""] + [f"- {k}: {v}" for k, v in inference.items()] + [""]
    return "\n".join(head + lines + per) + "\n"


