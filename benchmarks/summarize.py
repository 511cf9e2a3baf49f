"""Markdown tables (speed-up ratios of medians: robust to rounds disturbed by
other jobs on a shared machine) from a pytest-benchmark JSON file, and a PNG
of the main ratios.

    python -m pytest benchmarks --benchmark-json=bench.json
    python benchmarks/summarize.py bench.json [--plot ratios.png]

Groups ``cga*`` and ``tiles*`` compare implementations (``extra_info["impl"]``);
``case`` compares whole-case variants against ``omnet_cga-paper`` (seconds,
peak memory, tiles); ``train`` compares presets against ``omnet`` (patches/s,
peak memory). ``--goals`` adds the table of the GPU goals (:data:`GOALS`,
:func:`goals`), which ``make gpu-check`` prints in its report.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict

BASELINES = {"cga": ("eager", "compiled", "folded"), "tiles": ("reference", "monai"), "case": ("omnet_cga-paper",),
             "train": ("omnet",)}


def kind_of(group: str) -> str:
    return next((k for k in ("tiles", "case", "train") if group.startswith(k)), "cga")


def row_name(bench: dict) -> str:
    """The row a benchmark is in its group: its implementation, case variant or preset."""
    info, params = bench.get("extra_info", {}), bench.get("params") or {}
    return info.get("impl") or params.get("variant") or info.get("preset") or params.get("preset") or bench["name"]


def peak_memory(info: dict) -> str:
    if "peak_cuda_mb" in info:
        return f"{info['peak_cuda_mb']:.0f} (CUDA)"
    return f"{info['peak_rss_mb']:.0f} (RSS)" if "peak_rss_mb" in info else ""


def baseline_for(kind: str, base: str, impl: str) -> str:
    """Tile rows compare like with like: label-stitching rows against the label reference."""
    return f"{base}-labels" if kind == "tiles" and impl.endswith("-labels") else base


def ratio_table(rows: dict, ratios: list[str], kind: str) -> list[str]:
    header = ("| implementation | median (ms) | mean (ms) | stddev (ms) | rounds | effective GB/s (median) "
              "| % of copy bandwidth |")
    header += "".join(f" speed-up vs {b} |" for b in ratios)
    lines = [header, "|" + "---|" * (7 + len(ratios))]
    for impl, bench in rows.items():
        stats, info = bench["stats"], bench["extra_info"]
        nbytes = info.get("bytes_moved")
        gbps = f"{nbytes / stats['median'] / 1e9:.2f}" if nbytes else ""
        share = f"{100 * nbytes / stats['median'] / 1e9 / info['copy_gb_per_s']:.1f}" if nbytes and info.get("copy_gb_per_s") else ""
        line = (f"| {impl} | {stats['median'] * 1e3:.1f} | {stats['mean'] * 1e3:.1f} | {stats['stddev'] * 1e3:.1f} | "
                f"{stats['rounds']} | {gbps} | {share} |")
        for base in ratios:
            other = rows.get(baseline_for(kind, base, impl))
            line += f" {other['stats']['median'] / stats['median']:.2f}x |" if other else " |"
        lines.append(line)
    return lines


def case_table(rows: dict, base: str) -> list[str]:
    lines = ["| variant | seconds per case | speed-up vs " + base + " | peak memory (MB) | tiles per task | "
             "Dice vs paper tiles (WT/TC/ET) | Dice vs ground truth (WT/TC/ET) |", "|---|---|---|---|---|---|---|"]
    reference = rows.get(base)
    for name, bench in rows.items():
        info, median = bench["extra_info"], bench["stats"]["median"]
        ratio = f"{reference['stats']['median'] / median:.2f}x" if reference else ""
        tiles = ", ".join(f"{k} {v}" for k, v in (info.get("tiles") or {}).items())
        dice, truth = (" / ".join(f"{d[r]:.3f}" for r in ("WT", "TC", "ET")) if d else ""
                       for d in (info.get("dice_vs_paper_tiles"), info.get("dice_vs_ground_truth")))
        lines.append(f"| {name} | {median:.2f} | {ratio} | {peak_memory(info)} | {tiles} | {dice} | {truth} |")
    return lines


def train_table(rows: dict, base: str) -> list[str]:
    lines = ["| preset | seconds per step | patches per step | patches/s | speed vs " + base + " | peak memory (MB) |",
             "|---|---|---|---|---|---|"]
    reference = rows.get(base)
    for name, bench in rows.items():
        info, median = bench["extra_info"], bench["stats"]["median"]
        patches = info.get("patches_per_step")
        rate = f"{patches / median:.1f}" if patches else ""
        ratio = f"{reference['stats']['median'] / median:.2f}x" if reference else ""
        lines.append(f"| {name} | {median:.2f} | {patches or ''} | {rate} | {ratio} | {peak_memory(info)} |")
    return lines


def group_rows(data: dict) -> dict[str, dict[str, dict]]:
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        groups[bench["group"]][row_name(bench)] = bench
    return groups


def main_ratios(groups: dict) -> list[tuple[str, float]]:
    """(label, ratio) pairs for the plot: each row's speed-up over its group's first baseline."""
    out = []
    for group, rows in groups.items():
        kind = kind_of(group)
        base = next((b for b in BASELINES[kind] if b in rows), None)
        if base is None:
            continue
        for name, bench in rows.items():
            # a row's own baseline may differ from the group's (fused-labels vs reference-labels)
            own_base = baseline_for(kind, base, name)
            other = rows.get(own_base)
            if own_base != name and other is not None:
                out.append((f"{group}: {name} vs {own_base}", other["stats"]["median"] / bench["stats"]["median"]))
    return out


def plot(groups: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = main_ratios(groups)
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(pairs) + 1.2))
    labels, values = zip(*pairs) if pairs else ((), ())
    ax.barh(range(len(values)), values, color=["tab:green" if v >= 1 else "tab:red" for v in values])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("speed-up (ratio of medians, log scale; > 1 = faster than the baseline)")
    ax.set_title(title, fontsize=9)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}x", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# The performance goals of a GPU run (benchmarks/RESULTS.md, "GPU"): what each compares.
GOALS = (
    ("whole case, file to file, full width, the paper's tiles", "< 2 s"),
    ("OM-Net + CGA vs the MC3 cascade (case, paper's tiles)", ">= 2x faster"),
    ("OM-Net + CGA vs MONAI sliding_window_inference (same network and tiles)", ">= 1.3x faster"),
    ("fused CGA vs torch.compile of the eager head (every cga group)", ">= 1.5x faster"),
    ("training step at the paper's batch, full width: peak CUDA memory", "< 4 GB"),
    ("dense inference vs the paper's tiles (OM-Net + CGA, case)", ">= 4x faster"),
    ("dense inference vs MONAI sliding_window_inference (same network and tiles)", ">= 3x faster"),
    ("whole case, tensors to labels, full width, dense inference", "< 1 s"),
)


def _median(rows: dict, name: str):
    bench = rows.get(name)
    return bench["stats"]["median"] if bench else None


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "missed")


def _speedup(goal: str, target: str, case: dict, fast: str, slow: str, need: float, note: str = "") -> tuple:
    """The goal row "``fast`` is at least ``need`` times faster than ``slow``" (case rows)."""
    ours, theirs = _median(case, fast), _median(case, slow)
    if ours is None or theirs is None:
        return goal, target, f"no {fast if ours is None else slow} row", "n/a"
    ratio = theirs / ours
    return goal, target, f"{ratio:.2f}x ({theirs:.2f} s vs {ours:.2f} s){note}", _verdict(ratio >= need)


def goals(groups: dict) -> list[tuple[str, str, str, str]]:
    """(goal, target, measured, verdict) per entry of :data:`GOALS`; verdict ``met``,
    ``missed`` or ``n/a`` (the rows are absent, or a smoke run / a CPU cannot say)."""
    case, train = groups.get("case", {}), groups.get("train", {})
    full_width = all(b["extra_info"].get("width", 1.0) == 1.0 for b in [*case.values(), *train.values()])
    out = []
    (g1, t1), (g2, t2), (g3, t3), (g4, t4), (g5, t5), (g6, t6), (g7, t7), (g8, t8) = GOALS
    seconds = _median(case, "omnet_cga-file")
    if seconds is None:
        out.append((g1, t1, "no omnet_cga-file row", "n/a"))
    else:
        where = "" if full_width else " (not full width)"
        out.append((g1, t1, f"{seconds:.2f} s{where}", _verdict(seconds < 2.0 if full_width else None)))
    out.append(_speedup(g2, t2, case, "omnet_cga-paper", "mc3-paper", 2.0))
    out.append(_speedup(g3, t3, case, "omnet_cga-paper", "omnet_cga-monai", 1.3))
    ratios = []
    for group, rows in sorted(groups.items()):
        if kind_of(group) == "cga" and _median(rows, "fused") and _median(rows, "compiled"):
            ratios.append((group.removeprefix("cga "), _median(rows, "compiled") / _median(rows, "fused")))
    if ratios:
        measured = ", ".join(f"{name} {ratio:.2f}x" for name, ratio in ratios)
        toy = any("smoke" in name for name, _ in ratios)  # OMKIT_BENCH_SMOKE shapes say nothing about speed
        out.append((g4, t4, measured + (" (toy size)" if toy else ""),
                    _verdict(None if toy else min(r for _, r in ratios) >= 1.5)))
    else:
        out.append((g4, t4, "no cga rows with fused and compiled", "n/a"))
    peaks = {name: b["extra_info"].get("peak_cuda_mb") for name, b in train.items() if name.startswith("omnet_cga")}
    if peaks.get("omnet_cga") is None:
        out.append((g5, t5, "no CUDA peak of omnet_cga (a CPU run)" if "omnet_cga" in train else "no omnet_cga row",
                    "n/a"))
    else:
        measured = ", ".join(f"{name} {mb / 1024:.2f} GB" for name, mb in peaks.items() if mb is not None)
        batch = train["omnet_cga"]["extra_info"].get("batch_per_task")
        measured += f" (batch {batch} per task)" if batch else ""
        out.append((g5, t5, measured, _verdict(peaks["omnet_cga"] < 4096 if full_width else None)))
    where = "" if full_width else " (not full width)"
    out.append(_speedup(g6, t6, case, "omnet_cga-dense", "omnet_cga-paper", 4.0, where))
    out.append(_speedup(g7, t7, case, "omnet_cga-dense", "omnet_cga-monai", 3.0, where))
    dense = _median(case, "omnet_cga-dense")
    gpu = case.get("omnet_cga-dense", {}).get("extra_info", {}).get("device") == "cuda"
    if dense is None:
        out.append((g8, t8, "no omnet_cga-dense row", "n/a"))
    else:
        out.append((g8, t8, f"{dense:.2f} s" + ("" if full_width else " (not full width)") + ("" if gpu else " (CPU)"),
                    _verdict(dense < 1.0 if (full_width and gpu) else None)))
    return out


def goals_table(groups: dict) -> list[str]:
    """:func:`goals` as markdown lines."""
    lines = ["| goal | target | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| {g} | {t} | {m} | {v} |" for g, t, m, v in goals(groups)]
    return lines


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON file(s); groups of later files win")
    parser.add_argument("--plot", metavar="PNG", help="also draw the main ratios")
    parser.add_argument("--goals", action="store_true", help="also print the GPU goals' table")
    args = parser.parse_args(argv)
    groups: dict[str, dict[str, dict]] = {}
    heads = []
    for path in args.json:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        groups.update(group_rows(data))
        machine = data.get("machine_info", {})
        heads.append(f"_{data.get('datetime', '')}, {machine.get('cpu', {}).get('brand_raw', machine.get('processor', ''))}_")
    print("\n".join(heads) + "\n")
    for group, rows in groups.items():
        kind = kind_of(group)
        print(f"### {group}\n")
        ratios = [b for b in BASELINES[kind] if b in rows]
        if kind == "case":
            lines = case_table(rows, BASELINES["case"][0])
        elif kind == "train":
            lines = train_table(rows, BASELINES["train"][0])
        else:
            lines = ratio_table(rows, ratios, kind)
        print("\n".join(lines) + "\n")
    if args.goals:
        print("### goals\n\n" + "\n".join(goals_table(groups)) + "\n")
    if args.plot:
        plot(groups, args.plot, "omkit benchmarks: " + "; ".join(h.strip("_") for h in heads))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
