"""Challenge scoring with the organisers' own code: the BraTS 2024+ editions rank with
the ``brats-evaluation`` package (built on ``panoptica``), and omkit calls it rather
than restating its rules, so a score here is the leaderboard's by construction.

What the package does, per region group of its bundled config (``gli``: ET, NETC,
SNFH, RC, TC, WT; ``ped``: ET, NETC, CC, ED, TC, WT; ``MenRT``: GTV; ...):
connected components are the instances, matched one-to-one by maximal bipartite
matching on Dice (any overlap above 1e-6); instance-wise ("lesion-wise": the mean
over matched pairs, its ``sq_*`` values) and global DSC, NSD and HD95, and the
matching's TP / FN / FP counts. Its edge cases, from the bundled configs: an
empty prediction or reference gives DSC and NSD 0 and HD95 infinite; a group
empty in both gives NaN. The instance metrics use the voxel spacing (NSD
tolerance: the smallest spacing); the package computes the global metrics in
voxel units (NSD tolerance 0.5 voxel). BraTS data is 1 mm isotropic, where the
two agree.

omkit's label conventions (:mod:`omkit.labels`: 2018, 2023, 2024 with a resection
cavity) are mapped onto the labels each config expects (:data:`CHALLENGE_CONFIGS`);
``native`` passes files that already hold the challenge's labels through unchanged
(pediatric ground truth, whose cystic component no omkit convention has).

The package is an optional extra (``pip install 'omkit[challenge]'``): it pins
NumPy < 2.3 and connected-components-3d < 4 and brings pandas, scikit-image,
SimpleITK and plotly. It is AGPL-3.0 licensed; omkit only imports it.
"""
from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

EXTRA = "challenge"
PACKAGE = "brats-evaluation"
NATIVE = "native"  # --label-convention: the files hold the challenge's own labels
# what metrics.csv holds per case and region group: the package's values, named for omkit
METRIC_SOURCES = {
    "lesionwise_dsc": "sq_dsc", "lesionwise_nsd": "sq_nsd", "lesionwise_hd95": "sq_hd95",
    "global_dsc": "global_bin_dsc", "global_nsd": "global_bin_nsd", "global_hd95": "global_bin_hd95",
    "lesions_tp": "tp", "lesions_fn": "fn", "lesions_fp": "fp",
}
COLUMNS = ("case", "region") + tuple(METRIC_SOURCES)
# the organisers' parser ranks an infinite HD95 as the diameter of the SRI-24 volume, in mm
HD95_RANKING_PENALTY = 373.0
REGION_ORDER = ("WT", "TC", "ET", "NETC", "SNFH", "RC", "CC", "ED", "GTV")

GLIOMA_LABELS = {"ncr_net": 1, "edema": 2, "enhancing": 3, "resection_cavity": 4}
NO_CAVITY_LABELS = {"ncr_net": 1, "edema": 2, "enhancing": 3}  # configs without an RC group


@dataclass(frozen=True)
class ChallengeConfig:
    """One edition's scoring: the package's bundled config it runs, and where omkit's
    classes go in that config's labels (a class left out becomes background)."""

    name: str
    package_config: str
    description: str
    labels: Mapping[str, int]
    values: tuple[int, ...]  # every label value the config defines

    def settings(self) -> dict:
        """What ``summary.json`` records of the scoring."""
        from importlib.metadata import version

        return {"challenge": self.name, "description": self.description, "package": PACKAGE,
                "package_version": version(PACKAGE), "panoptica_version": version("panoptica"),
                "package_config": self.package_config, "labels": dict(self.labels),
                "lesionwise": "instance-wise mean over matched pairs (panoptica sq_*)",
                "hd95_summary": f"infinite HD95 counted as {HD95_RANKING_PENALTY:g} mm in means, as the "
                                "organisers' parser ranks it; NaN (nothing to score) left out"}


CHALLENGE_CONFIGS: dict[str, ChallengeConfig] = {c.name: c for c in (
    ChallengeConfig("BraTS-GLI-2025", "gli", "BraTS 2025 adult glioma, pre- and post-treatment", GLIOMA_LABELS,
                    (1, 2, 3, 4)),
    # the package has no SSA config; the SSA glioma data carries the glioma labels
    ChallengeConfig("BraTS-SSA-2025", "gli", "BraTS 2025 sub-Saharan Africa glioma (the glioma config)",
                    GLIOMA_LABELS, (1, 2, 3, 4)),
    ChallengeConfig("BraTS-MET-2025", "mets", "BraTS 2025 brain metastases", GLIOMA_LABELS, (1, 2, 3, 4)),
    ChallengeConfig("BraTS-MEN-2025", "MenPre", "BraTS 2025 pre-operative meningioma", NO_CAVITY_LABELS, (1, 2, 3)),
    # the radiotherapy target: the tumor core (edema is not part of a meningioma's GTV)
    ChallengeConfig("BraTS-MEN-RT-2025", "MenRT", "BraTS 2025 meningioma radiotherapy (GTV)",
                    {"ncr_net": 1, "enhancing": 1}, (1,)),
    ChallengeConfig("BraTS-PED-2025", "ped", "BraTS 2025 pediatric tumors", {"enhancing": 1, "ncr_net": 2, "edema": 4},
                    (1, 2, 3, 4)),
    ChallengeConfig("BraTS-GoAT-2025", "GoAT", "BraTS 2025 generalizability across tumors", NO_CAVITY_LABELS,
                    (1, 2, 3)),
)}


class ChallengePackageMissing(ImportError, ValueError):
    """The optional package is not installed (a ValueError too: the command line prints it as one line)."""


def get_challenge_config(name: str | ChallengeConfig) -> ChallengeConfig:
    if isinstance(name, ChallengeConfig):
        return name
    try:
        return CHALLENGE_CONFIGS[str(name)]
    except KeyError:
        raise ValueError(f"--challenge: unknown challenge {name!r}; choose one of {', '.join(CHALLENGE_CONFIGS)}") \
            from None


@contextlib.contextmanager
def _quiet():
    """The package prints a citation banner and label-group notes, and warns about its
    global NSD tolerance on every call; omkit's output stays its own."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def load_evaluator(challenge: str | ChallengeConfig):
    """The package's evaluator for ``challenge``'s bundled config; one line naming the
    extra when the package is not installed."""
    config = get_challenge_config(challenge)
    try:
        with _quiet():
            from brats_evaluation import config_path
            from panoptica import Panoptica_Evaluator
    except ImportError as exc:
        raise ChallengePackageMissing(
            f"--challenge {config.name} scores with the organisers' package {PACKAGE}, which is not installed "
            f"({exc.name or exc}): pip install 'omkit[{EXTRA}]'") from None
    with _quiet():
        return Panoptica_Evaluator.load_from_config(str(config_path(config.package_config)))


def to_challenge_labels(labels: np.ndarray, convention: str, challenge: str | ChallengeConfig,
                        path: Path | str = "labels") -> np.ndarray:
    """A label map in an omkit convention (or ``native``) as ``challenge``'s config labels it
    (uint8); values outside the convention are one line naming ``path``."""
    from omkit.labels import get_convention

    config = get_challenge_config(challenge)
    labels = np.asarray(labels)
    # counting beats sorting (np.unique) on a whole BraTS volume, and the mapping is one table lookup
    nonnegative = labels.size and np.issubdtype(labels.dtype, np.integer) and labels.min() >= 0
    present = set((np.flatnonzero(np.bincount(labels.ravel())) if nonnegative else np.unique(labels)).tolist())
    if convention == NATIVE:
        bad = sorted(present - {0, *config.values})
        if bad:
            raise ValueError(f"{path}: label values {bad} are not labels of {config.name} {(0,) + config.values}")
        return labels.astype(np.uint8)
    conv = get_convention(convention)
    bad = sorted(present - set(conv.valid_values))
    if bad:
        raise ValueError(f"{path}: label values {bad} are not in the {conv.name} convention {conv.valid_values}")
    table = np.zeros(max(conv.valid_values) + 1, np.uint8)
    for cls, value in config.labels.items():
        source = getattr(conv, cls)
        if source is not None:
            table[source] = value
    return table[labels]


def score_labels(evaluator, pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> dict[str, dict]:
    """``{region group: {metric: value}}`` of two maps in the config's labels, as the package
    scores them (``spacing`` in mm along the arrays' axes)."""
    with _quiet():
        results = evaluator.evaluate(np.ascontiguousarray(pred, np.uint8), np.ascontiguousarray(gt, np.uint8),
                                     voxelspacing=tuple(float(s) for s in spacing), verbose=False)
    out = {}
    for group, result in results.items():
        values = result.to_dict(True)  # what the package's own evaluate_single_exam reports
        out[group.upper()] = {name: _number(values.get(source)) for name, source in METRIC_SOURCES.items()}
    return dict(sorted(out.items(), key=lambda item: _region_rank(item[0])))


def _number(value):
    if value is None:
        return float("nan")
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return float(value)


def _region_rank(region: str) -> tuple[int, str]:
    return (REGION_ORDER.index(region) if region in REGION_ORDER else len(REGION_ORDER), region)


def evaluate_challenge_folders(pred_dir: Path, gt_dir: Path, challenge: str, label_convention: str | None = None,
                               ) -> tuple[list[dict], list[str]]:
    """Long-form rows (:data:`COLUMNS`) per case and region group, and the ground-truth
    case ids that have no prediction; pairing, reading and checks as ``omkit evaluate``."""
    from omkit.evaluation import paired_cases, read_pair

    config = get_challenge_config(challenge)
    pairs, unmatched = paired_cases(pred_dir, gt_dir)  # folder errors before the package is loaded
    evaluator = load_evaluator(config)
    native = label_convention == NATIVE
    rows = []
    for case_id, pred_path, gt_path, naming in pairs:
        pred, gt, zooms, pred_convention, gt_convention = read_pair(
            pred_path, gt_path, None if native else naming, label_convention)
        scores = score_labels(evaluator, to_challenge_labels(pred, pred_convention, config, pred_path),
                              to_challenge_labels(gt, gt_convention, config, gt_path), zooms)
        rows.extend({"case": case_id, "region": region, **values} for region, values in scores.items())
    return rows, unmatched


def score_internal(evaluator, pred_classes: np.ndarray, gt_classes: np.ndarray, spacing: Sequence[float],
                   challenge: str | ChallengeConfig) -> dict[str, dict]:
    """:func:`score_labels` of two internal class maps (``omkit.labels``; no resection cavity)."""
    from omkit.labels import BRATS2023

    return score_labels(evaluator, to_challenge_labels(BRATS2023.from_internal(pred_classes), "2023", challenge),
                        to_challenge_labels(BRATS2023.from_internal(gt_classes), "2023", challenge), spacing)


def challenge_scorer(name: str):
    """``score(pred_classes, gt_classes, spacing) -> {region: {metric: value}}`` on internal class
    maps for any ``--challenge``: a 2023 name scores with :mod:`omkit.lesionwise`'s rules, a 2025
    one with the organisers' package (loaded here: a missing package fails before any work)."""
    from omkit.labels import internal_regions
    from omkit.lesionwise import CHALLENGES, case_lesionwise

    if name not in CHALLENGES and name not in CHALLENGE_CONFIGS:
        raise ValueError(f"--challenge: unknown challenge {name!r}; choose one of "
                         f"{', '.join((*CHALLENGES, *CHALLENGE_CONFIGS))}")
    if name in CHALLENGES:
        return lambda pred, gt, spacing: case_lesionwise(internal_regions(pred), internal_regions(gt), spacing, name)
    evaluator = load_evaluator(name)
    return lambda pred, gt, spacing: score_internal(evaluator, pred, gt, spacing, name)


def _ranked(metric: str, value) -> float:
    value = float(value)
    if metric.endswith("hd95") and math.isinf(value):
        return HD95_RANKING_PENALTY
    return value


def summarize_challenge(rows: Sequence[Mapping]) -> dict:
    """Per region group and metric: mean, median, std (population) and ``n`` over the cases
    where it is defined (NaN left out), an infinite HD95 counted as
    :data:`HD95_RANKING_PENALTY`; ``infinite`` says how many were; lesion counts also ``total``.
    An undefined statistic is None (summary.json stays strict JSON)."""
    summary: dict = {}
    metrics = [k for k in (rows[0] if rows else METRIC_SOURCES) if k not in ("case", "region", "variant")]
    for region in sorted({row["region"] for row in rows}, key=_region_rank):
        chosen = [row for row in rows if row["region"] == region]
        summary[region] = {}
        for metric in metrics:
            raw = [float(row[metric]) for row in chosen]
            values = np.array([_ranked(metric, v) for v in raw if not math.isnan(v)], np.float64)
            stats = {"mean": float(values.mean()) if values.size else None,
                     "median": float(np.median(values)) if values.size else None,
                     "std": float(values.std()) if values.size else None, "n": int(values.size)}
            if metric.endswith("hd95"):
                stats["infinite"] = sum(1 for v in raw if math.isinf(v))
            if metric.startswith("lesions_"):
                stats["total"] = int(values.sum())
            summary[region][metric] = stats
    return summary


def format_challenge_table(summary: Mapping, count: int, challenge: str) -> str:
    """Mean per region group of the lesion-wise and global metrics, and the lesion counts."""
    def cell(stats, digits):
        return "n/a" if stats["mean"] is None else f"{stats['mean']:.{digits}f}"

    header = (f"{'region':<7}{'LW DSC':>9}{'LW NSD':>9}{'LW HD95':>10}{'DSC':>9}{'NSD':>9}{'HD95':>10}"
              f"{'TP/FN/FP':>14}")
    lines = [header]
    for region, m in summary.items():
        counts = "/".join(str(m[f"lesions_{k}"]["total"]) for k in ("tp", "fn", "fp"))
        lines.append(f"{region:<7}{cell(m['lesionwise_dsc'], 3):>9}{cell(m['lesionwise_nsd'], 3):>9}"
                     f"{cell(m['lesionwise_hd95'], 2):>10}{cell(m['global_dsc'], 3):>9}{cell(m['global_nsd'], 3):>9}"
                     f"{cell(m['global_hd95'], 2):>10}{counts:>14}")
    lines.append(f"{challenge}: mean over {count} case(s) where defined (infinite HD95 as "
                 f"{HD95_RANKING_PENALTY:g} mm); LW = lesion-wise; counts summed; medians in summary.json")
    return "\n".join(lines)


def challenge_table(results: Sequence[Mapping], name: str) -> list[dict]:
    """The ablation's challenge lines: per row, variant (raw / post-processed) and region, the
    mean of each metric over the held-out cases (as :func:`summarize_challenge`; the lesion
    counts summed). Rows saved without scores of ``name`` (an earlier study) are left out."""
    lines = []
    for result in results:
        scored = result.get("challenge") or {}
        if scored.get("name") != name:
            continue
        for variant in sorted({c["variant"] for c in scored["cases"]}, key=lambda v: v != "raw"):
            chosen = [c for c in scored["cases"] if c["variant"] == variant]
            row = result["row"] + ("+p" if variant == "post" else "")
            for region, metrics in summarize_challenge(chosen).items():
                line = {"row": row, "split": result["split"], "challenge": name, "region": region,
                        "cases": len({c["case"] for c in chosen if c["region"] == region})}
                for metric, stats in metrics.items():
                    line[metric] = stats["total"] if "total" in stats else stats["mean"]
                lines.append(line)
    return lines
