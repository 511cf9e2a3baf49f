"""The ablation's report: the CSV and Markdown a study writes from its statistics
(``omkit.ablation.statistics``)."""
from __future__ import annotations

import csv
import io
import json
from typing import Sequence

from ..labels import REGIONS
from .statistics import BOOTSTRAP_RESAMPLES, paired_differences


def csv_text(rows: Sequence[dict]) -> str:
    """``rows`` (dicts with the same keys) as CSV, floats to four decimals."""
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


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


