"""Simulation throughput: images per second per recipe, 1 and 2 workers (medians).

Each measurement is a full ``enflens.data.generate`` call (simulation, normalisation, HDF5
write, sha256) after one warm-up call in the same process, so lenstronomy imports and numba
compilation are not counted; pool start-up is. Also prints the single-process render time per
class, images per CPU-second (robust to other jobs on the cores) and the extrapolated time of
the full-size Model II set (per class 30,000 + 3,000 + 5,000).

    .venv/bin/python bench/simulate.py [--n-per-class 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from enflens import data
from enflens.data import lensing

FULL_MODEL_II_IMAGES = 3 * (30_000 + 3_000 + 5_000)
TARGET_SECONDS = 300.0


def per_class_ms(recipe: str, n: int = 30) -> list[float]:
    """Median ms per noisy image for each class, one process (Simulator.sample)."""
    sim = lensing.Simulator(recipe)
    sim.sample(0, 0, 0)
    out = []
    for label in range(3):
        times = []
        for i in range(n):
            t = time.perf_counter()
            sim.sample(1, 0, 3 * i + label)
            times.append(time.perf_counter() - t)
        out.append(1e3 * statistics.median(times))
    return out


def throughput(
    recipe: str, n_per_class: int, workers: int, repeats: int, folder: Path
) -> tuple[float, float]:
    """Median images/s of ``generate`` (train split only, 3 * n_per_class images).

    Returns (images per wall-clock second, images per CPU second of this process). With one
    worker all the work runs in this process, so the second figure is the per-core rate that
    other jobs sharing the cores do not dilute; with more workers it is not meaningful.
    """
    kw = dict(workers=workers, n_val=0, n_test=0, progress=False)
    data.generate(recipe, max(1, n_per_class // 4), 0, folder / "warm.h5", **kw)
    rates, cpu_rates = [], []
    for r in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        data.generate(recipe, n_per_class, r, folder / f"{recipe}-{workers}.h5", **kw)
        rates.append(3 * n_per_class / (time.perf_counter() - t))
        cpu_rates.append(3 * n_per_class / (time.process_time() - c))
    return statistics.median(rates), statistics.median(cpu_rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-per-class", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--recipes", nargs="+", default=list(lensing.RECIPE_NAMES))
    args = p.parse_args()
    print(f"{'recipe':10s} {'no_sub ms':>9s} {'cdm ms':>7s} {'axion ms':>8s} "
          f"{'1 worker img/s':>15s} {'2 workers img/s':>16s} {'img/CPU-s':>10s}")  # fmt: skip
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes:
            ms = per_class_ms(recipe)
            r1, cpu1 = throughput(recipe, args.n_per_class, 1, args.repeats, Path(tmp))
            r2, _ = throughput(recipe, args.n_per_class, 2, args.repeats, Path(tmp))
            rates[recipe] = (r2, cpu1)
            print(
                f"{recipe:10s} {ms[0]:9.2f} {ms[1]:7.2f} {ms[2]:8.2f} {r1:15.1f} {r2:16.1f} "
                f"{cpu1:10.1f}"
            )
    if "model_ii" in rates:
        r2, cpu1 = rates["model_ii"]
        n = FULL_MODEL_II_IMAGES
        print(
            f"full Model II ({n} images, target {TARGET_SECONDS:.0f} s = "
            f"{n / TARGET_SECONDS:.0f} images/s): {n / r2:.0f} s at the measured 2-worker rate; "
            f"{n / (2 * cpu1):.0f} s on 2 free cores at the per-CPU-second rate"
        )
    print(f"{args.n_per_class * 3} images per measurement, median of {args.repeats}; "
          "timings are noisy when other jobs share the cores.")  # fmt: skip


if __name__ == "__main__":
    main()
