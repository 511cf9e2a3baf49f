"""Markdown tables (speed-up ratios of medians: robust to rounds disturbed by
other jobs on a shared machine) from a pytest-benchmark JSON file.

    python -m pytest benchmarks --benchmark-json=bench.json
    python benchmarks/summarize.py bench.json
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict

BASELINES = {"cga": ("eager", "compiled", "folded"), "tiles": ("reference",)}


def baseline_for(kind: str, base: str, impl: str) -> str:
    """Tile rows compare like with like: label-stitching rows against the label reference."""
    return f"{base}-labels" if kind == "tiles" and impl.endswith("-labels") else base


def main(path: str) -> int:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        groups[bench["group"]][bench["extra_info"]["impl"]] = bench
    machine = data.get("machine_info", {})
    print(f"_{data.get('datetime', '')}, {machine.get('cpu', {}).get('brand_raw', machine.get('processor', ''))}_\n")
    for group, rows in groups.items():
        kind = "tiles" if group.startswith("tiles") else "cga"
        print(f"### {group}\n")
        header = "| implementation | median (ms) | mean (ms) | stddev (ms) | rounds | effective GB/s (median) |"
        ratios = [b for b in BASELINES[kind] if b in rows]
        header += "".join(f" speed-up vs {b} |" for b in ratios)
        print(header)
        print("|" + "---|" * (6 + len(ratios)))
        for impl, bench in rows.items():
            stats = bench["stats"]
            nbytes = bench["extra_info"].get("bytes_moved")
            gbps = f"{nbytes / stats['median'] / 1e9:.2f}" if nbytes else ""
            line = (f"| {impl} | {stats['median'] * 1e3:.1f} | {stats['mean'] * 1e3:.1f} | {stats['stddev'] * 1e3:.1f} | "
                    f"{stats['rounds']} | {gbps} |")
            for base in ratios:
                other = rows.get(baseline_for(kind, base, impl))
                line += f" {other['stats']['median'] / stats['median']:.2f}x |" if other else " |"
            print(line)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
