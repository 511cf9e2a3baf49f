"""Running the ablation: train (or resume) each row on each split, predict and score its
held-out cases, save the scores per row and split, and write the tables and overlays."""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..fileio import atomic_write_text
from ..labels import REGIONS
from .plan import ENSEMBLE_ROW, AblationConfig, Split, plan_splits, row_folder, study_predictor
from .report import csv_text, markdown_table
from .statistics import paired_differences, summarize_results


def saved_row_results(study: str | Path, row: str) -> list[dict]:
    """The saved result of ``row`` on each split a study has scored (possibly none yet),
    in split order; each names its split, held-out cases and per-case scores."""
    folder = Path(study) / "runs" / row_folder(row)
    results = [read_scores(path, row, path.parent.name) for path in sorted(folder.glob("*/scores.json"))]
    return [r for r in results if r is not None]


def _train_config(config: AblationConfig, preset: str, data: str, run_dir: Path, folds) -> dict:
    settings = {
        "seed": config.seed, "device": config.device, "label_convention": config.label_convention,
        **config.train, "preset": preset, "input": data, "output": str(run_dir),
    }
    if folds is not None:
        settings["folds"], settings["fold"] = folds
    return settings


def _train(settings: dict, log: Callable[[str], None]) -> Path:
    """Train (or resume, or reuse a finished run) and return its model file."""
    from ..training import train

    run_dir = Path(settings["output"])
    model = run_dir / "model.pt"
    if model.exists():
        return model
    # a run killed before its first checkpoint starts over (its folder carries omkit's marker)
    resume = (run_dir / "checkpoints" / "last.pt").exists()
    log(f"  training {settings['preset']} -> {run_dir}" + (" (resuming)" if resume else ""))
    train(settings, resume=resume, force=not resume)
    return model


def _score_cases(models: Sequence[Path], cases: Sequence[Path], config: AblationConfig,
                 pred_dir: Path, log: Callable[[str], None]) -> list[dict]:
    """Predict ``cases`` once; score the raw and (optionally) post-processed maps."""
    from ..inference import build_postprocessors
    from ..inference.pipeline import load_for_prediction, predict_case, write_label_map
    from ..labels import internal_regions
    from ..lesionwise import false_positive_components
    from ..metrics import case_metrics_internal

    predictor = study_predictor(config, models)
    log(f"    {predictor.inference_note}")
    steps = build_postprocessors(enable_steps=config.enable_steps, disable_steps=config.disable_steps,
                                 step_options=config.step_options) if config.postprocess else []
    score_challenge = None
    if config.challenge:
        from ..challenge import challenge_scorer

        score_challenge = challenge_scorer(config.challenge)
    rows, challenge_rows = [], []
    for case_dir in cases:
        case = load_for_prediction(case_dir, label_convention=config.label_convention, with_label=True)
        started = time.perf_counter()
        result = predict_case(case, predictor, steps)
        variants = {"raw": result.raw_labels}
        if steps:
            variants["post"] = result.labels
        seconds = time.perf_counter() - started
        for variant, labels in variants.items():
            write_label_map(labels, case, pred_dir / variant / f"{case.case_id}.nii.gz", case.convention, force=True)
            scores = case_metrics_internal(labels, case.label, case.spacing)
            pred_regions, gt_regions = internal_regions(labels), internal_regions(case.label)
            for region in REGIONS:
                # false tumor no true tumor explains: components of the prediction touching no ground truth
                fp_count, fp_voxels = false_positive_components(pred_regions[region], gt_regions[region])
                rows.append({"case": case.case_id, "variant": variant, "region": region, "seconds": seconds,
                             **scores[region], "fp_components": fp_count, "fp_voxels": fp_voxels})
            if score_challenge:
                challenge_rows.extend({"case": case.case_id, "variant": variant, "region": region, **values}
                                      for region, values in score_challenge(labels, case.label, case.spacing).items())
        wt = {v: case_metrics_internal(l, case.label, case.spacing)["WT"]["dice"] for v, l in variants.items()}
        log(f"    {case.case_id}: Dice WT " + ", ".join(f"{v} {d:.3f}" for v, d in wt.items()))
    return rows, challenge_rows, predictor.inference_note


def _number(value) -> bool:
    """A score as the tables read it: a real number (JSON has no NaN; null is none)."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _case_score_ok(score) -> bool:
    """One case's saved scores, typed as the tables need them (a "dice": "x" is not)."""
    return (isinstance(score, dict) and {"case", "variant", "region", "dice", "hd95"} <= set(score)
            and all(isinstance(score[k], str) for k in ("case", "variant", "region"))
            and all(_number(v) for k, v in score.items() if k not in ("case", "variant", "region")))


def read_scores(path: Path, row: str, split: str) -> dict | None:
    """The saved result of ``row`` on ``split`` (JSON: nothing in it can run
    code), or None when there is none; a malformed file is a warning naming
    it, and the row is scored again (its training resumes or is reused)."""
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        ok = (isinstance(result, dict) and result.get("row") == row and result.get("split") == split
              and isinstance(result.get("title"), str) and isinstance(result.get("parameters"), int)
              and isinstance(result.get("cases"), list)
              and all(_case_score_ok(c) for c in result["cases"]))
        if not ok:
            raise ValueError("not the scores of this row and split")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        warnings.warn(f"{path}: unreadable saved scores ({type(exc).__name__}: {exc}); scoring the row again",
                      stacklevel=2)
        return None
    return result


def run_row(config: AblationConfig, row: str, split: Split, log: Callable[[str], None] = print) -> dict:
    """Train ``row`` on ``split`` (or an ensemble of fold models for
    :data:`ENSEMBLE_ROW`), score the held-out cases; cached in ``scores.json``."""
    from ..checkpoint import load_model
    from ..data.splits import kfold_split
    from ..factory import count_parameters, get_preset

    out = Path(config.output)
    row_dir = out / "runs" / row_folder(row) / split.name
    done = row_dir / "scores.json"
    saved = read_scores(done, row, split.name)
    if saved is not None:
        return saved
    started = time.perf_counter()
    if row == ENSEMBLE_ROW:
        preset = "omnet_cga"
        models = []
        for k in range(config.ensemble):
            kfold_split(split.train, config.ensemble, k, seed=0)  # fails early on too few cases
            settings = _train_config(config, preset, split.train_data, row_dir / f"member{k}", (config.ensemble, k))
            models.append(_train(settings, log))
    else:
        preset = row
        models = [_train(_train_config(config, row, split.train_data, row_dir, split.train_folds), log)]
    model, _ = load_model(models[0])
    cases, challenge_rows, inference = _score_cases(models, split.held_out, config,
                                                    out / "predictions" / row_dir.relative_to(out / "runs"), log)
    result = {
        "row": row, "preset": preset, "split": split.name,
        "title": get_preset(preset).title + ("*" if row == ENSEMBLE_ROW else ""),
        "parameters": count_parameters(model), "width": getattr(model, "width", None),
        "held_out": [c.name for c in split.held_out],
        "cases": cases, "inference": inference, "seconds": time.perf_counter() - started,
    }
    if config.challenge:
        result["challenge"] = {"name": config.challenge, "cases": challenge_rows}
    atomic_write_text(done, json.dumps(result, indent=1))
    return result


def _prediction_path(out: Path, row: str, split: str, variant: str, case_id: str) -> Path:
    """Where :func:`_score_cases` wrote a held-out case's label map."""
    return out / "predictions" / row_folder(row) / split / variant / f"{case_id}.nii.gz"


def write_extreme_overlays(results: Sequence[dict], config: AblationConfig) -> list[Path]:
    """Fig. 7 style PNGs of each row's best and worst held-out case (by mean Dice
    over WT/TC/ET, post-processed maps when there are), ``OUT/overlays/ROW-best-CASE.png``;
    drawn from the saved label maps, so a resumed study redraws them without predicting."""
    from ..data import find_cases
    from ..data.brats import to_omkit_axes
    from ..inference.pipeline import load_for_prediction
    from ..labels import get_convention
    from ..evaluation import read_label_map
    from ..viz import save_overlay

    out = Path(config.output)
    case_dirs = {c.name: c for c in find_cases(config.input)}
    written = []
    for row in dict.fromkeys(r["row"] for r in results):
        mine = [r for r in results if r["row"] == row]
        variant = "post" if any(c["variant"] == "post" for r in mine for c in r["cases"]) else "raw"
        scores = {}  # (split, case) -> mean Dice
        for res in mine:
            for case in {c["case"] for c in res["cases"]}:
                dice = [c["dice"] for c in res["cases"] if c["case"] == case and c["variant"] == variant]
                scores[(res["split"], case)] = float(np.mean(dice))
        if not scores:
            continue
        ranked = sorted(scores, key=lambda key: (scores[key], key))  # ties: by split and case name
        for which, (split, case_id) in (("best", ranked[-1]), ("worst", ranked[0])):
            target = out / "overlays" / f"{row_folder(row)}-{which}-{case_id}.png"
            source = _prediction_path(out, row, split, variant, case_id)
            if target.exists() or not source.exists() or case_id not in case_dirs:
                written += [target] if target.exists() else []
                continue
            case = load_for_prediction(case_dirs[case_id], label_convention=config.label_convention, with_label=True)
            labels = get_convention(case.convention).to_internal(to_omkit_axes(read_label_map(source)[0]))
            save_overlay(target, case.image[0], labels, case.label,
                         title=f"{row} ({variant}), {which} held-out case {case_id}: mean Dice {scores[(split, case_id)]:.3f}")
            written.append(target)
    return written


def run_ablation(config: AblationConfig, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the whole study; returns the paths of the tables."""
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ablation_config.json", json.dumps(asdict(config), indent=1, default=str))
    splits = plan_splits(config)
    rows = list(config.rows) + ([ENSEMBLE_ROW] if config.ensemble else [])
    results = []
    for row in rows:
        for split in splits:
            log(f"[{row}] {split.name}: {len(split.train)} training / {len(split.held_out)} held-out cases")
            results.append(run_row(config, row, split, log))
    table, per_split = summarize_results(results)
    paths = {"markdown": out / "ablation.md", "csv": out / "ablation.csv", "per_split_csv": out / "ablation_per_split.csv",
             "per_case_csv": out / "ablation_per_case.csv", "paired_csv": out / "ablation_paired.csv"}
    per_case = [{"row": r["row"], "split": r["split"], **c} for r in results for c in r["cases"]]
    inference = {f"{r['row']} {r['split']}": r.get("inference", "not recorded") for r in results}
    atomic_write_text(paths["markdown"], markdown_table(table, per_split, config, per_case, inference))
    atomic_write_text(paths["csv"], csv_text(table))
    atomic_write_text(paths["per_split_csv"], csv_text(per_split))
    atomic_write_text(paths["per_case_csv"], csv_text(per_case))
    atomic_write_text(paths["paired_csv"], csv_text(paired_differences(per_case)))
    if config.challenge:
        from ..challenge import challenge_table

        paths["challenge_csv"] = out / "ablation_challenge.csv"
        atomic_write_text(paths["challenge_csv"], csv_text(challenge_table(results, config.challenge)))
    overlays = write_extreme_overlays(results, config)
    return {**{k: str(v) for k, v in paths.items()}, "overlays": [str(p) for p in overlays]}
