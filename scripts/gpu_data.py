#!/usr/bin/env python3
"""Prepare ``gpu_data/`` (git-ignored): a few real BraTS cases, copied as they are
(full 240 x 240 x 155 volumes: the whole-case benchmark times a real case file to
file), for ``make gpu-check`` on a machine without the shared data. The smallest
cases are taken; the sizes of everything that travels with the checkout
(``gpu_data/`` and ``gpu_wheels/``) are printed and checked against the limit.

Usage: python3 scripts/gpu_data.py [--source ../shared/data/brats2018-sample]
           [--cases 2] [--out gpu_data] [--limit-mib 64]
Standard library only.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def mib(path: Path) -> float:
    if not path.exists():
        return 0.0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def is_case(folder: Path) -> bool:
    return folder.is_dir() and any(f.name.endswith("_seg.nii.gz") or f.name.endswith("-seg.nii.gz")
                                   for f in folder.iterdir())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "brats2018-sample"))
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "gpu_data"))
    parser.add_argument("--wheels", default=str(REPO / "gpu_wheels"))
    parser.add_argument("--limit-mib", type=float, default=64.0)
    args = parser.parse_args(argv)
    source, out = Path(args.source), Path(args.out)
    if not source.is_dir():
        print(f"gpu_data: {source}: no such folder (pass --source)", file=sys.stderr)
        return 2
    cases = sorted((c for c in source.iterdir() if is_case(c)), key=lambda c: (mib(c), c.name))[:args.cases]
    if not cases:
        print(f"gpu_data: no BraTS case folders (with a seg file) in {source}", file=sys.stderr)
        return 2
    target = out / source.name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for case in cases:
        shutil.copytree(case, target / case.name)
        print(f"gpu_data: {case.name}: {mib(target / case.name):.1f} MiB")
    for extra in ("README.md", "LICENSE"):  # the data's terms travel with it
        if (source / extra).is_file():
            shutil.copy2(source / extra, target / extra)
    data, wheels = mib(out), mib(Path(args.wheels))
    total = data + wheels
    print(f"gpu_data: {target}: {len(cases)} cases, {data:.1f} MiB; gpu_wheels: {wheels:.1f} MiB; "
          f"together {total:.1f} MiB of the {args.limit_mib:g} MiB that may travel")
    if total > args.limit_mib:
        print(f"gpu_data: over the limit: take fewer cases (--cases) or fewer wheels", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
