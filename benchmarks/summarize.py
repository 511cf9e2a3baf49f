"""Markdown tables (with speed-up ratios) from a pytest-benchmark JSON file.

    python -m pytest benchmarks --benchmark-json=bench.json
    python benchmarks/summarize.py bench.json
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict

BASELINES = {"cga": ("eager", "compiled", "folded"), "tiles": ("reference", "reference-labels")}


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
        header = "| implementation | mean (ms) | stddev (ms) | rounds | effective GB/s |"
        ratios = [b for b in BASELINES[kind] if b in rows]
        header += "".join(f" speed-up vs {b} |" for b in ratios)
        print(header)
        print("|" + "---|" * (5 + len(ratios)))
        for impl, bench in rows.items():
            stats = bench["stats"]
            line = (f"| {impl} | {stats['mean'] * 1e3:.1f} | {stats['stddev'] * 1e3:.1f} | {stats['rounds']} | "
                    f"{bench['extra_info'].get('gb_per_s', '')} |")
            for base in ratios:
                line += f" {rows[base]['stats']['mean'] / stats['mean']:.2f}x |"
            print(line)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
