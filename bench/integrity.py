"""Cost of the default dataset verification: ``data.load`` with and without ``verify`` (minimum
and median of repeats, all splits), beside a plain h5py read of the same arrays.

``load`` always checks every array (dtype, shape, label range, finite values, pixel range, row
counts); ``verify`` (the default) adds the sha256 of every array. For the cpu-profile dataset::

    .venv/bin/python -m enflens.data generate --recipe model_ii --n-per-class 3000 \\
        --n-val 300 --n-test 1000 --seed 0 --workers 2 --out /tmp/cpu.h5
    .venv/bin/python bench/integrity.py /tmp/cpu.h5 [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import h5py

from enflens import data


def timed(fn, repeats: int) -> tuple[float, float]:
    """(min, median) seconds of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path", type=Path)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    def raw() -> None:
        with h5py.File(args.path, "r") as f:
            for s in data.SPLITS:
                for name in f[s]:
                    f[s][name][()]

    with h5py.File(args.path, "r") as f:
        n = sum(f[s]["labels"].shape[0] for s in data.SPLITS)
    rows = {
        "h5py read only": raw,
        "load(verify=False): checks": lambda: [
            data.load(args.path, s, verify=False) for s in data.SPLITS
        ],
        "load(): checks + sha256 (default)": lambda: [data.load(args.path, s) for s in data.SPLITS],
    }
    print(f"{args.path}: {n} images, all splits, {args.repeats} repeats")
    for name, fn in rows.items():
        lo, med = timed(fn, args.repeats)
        print(f"  {name:36s} min {lo:.3f} s  median {med:.3f} s")


if __name__ == "__main__":
    main()
