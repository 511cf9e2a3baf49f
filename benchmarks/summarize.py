"""Markdown tables (speed-up ratios of medians: robust to rounds disturbed by
other jobs on a shared machine) from a pytest-benchmark JSON file, and a PNG
of the main ratios.

    python -m pytest benchmarks --benchmark-json=bench.json
    python benchmarks/summarize.py bench.json [--plot ratios.png]

Groups ``cga*`` and ``tiles*`` compare implementations (``extra_info["impl"]``);
``case`` compares whole-case variants against ``omnet_cga-paper`` (seconds,
peak memory, tiles); ``train`` compares presets against ``omnet`` (patches/s,
peak memory).
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


def _ratio_table(rows: dict, ratios: list[str], kind: str) -> list[str]:
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


def _case_table(rows: dict, base: str) -> list[str]:
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


def _train_table(rows: dict, base: str) -> list[str]:
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


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON file(s); groups of later files win")
    parser.add_argument("--plot", metavar="PNG", help="also draw the main ratios")
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
            lines = _case_table(rows, BASELINES["case"][0])
        elif kind == "train":
            lines = _train_table(rows, BASELINES["train"][0])
        else:
            lines = _ratio_table(rows, ratios, kind)
        print("\n".join(lines) + "\n")
    if args.plot:
        plot(groups, args.plot, "omkit benchmarks: " + "; ".join(h.strip("_") for h in heads))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
