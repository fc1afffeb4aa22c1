"""End to end: `make reproduce PROFILE=smoke` from scratch in two fresh copies of the repository
at the same time, then once more in the first copy from its cache (tests/smoke_runs.py; the runs
start when pytest has collected these tests and go on alongside the rest of the suite).

* Reproducible by construction: the two fresh runs must write identical results JSON for every
  number that is not a timing (keys naming ``seconds`` or ``per_second``, or starting ``ms_``);
  budgets are step counts, so how busy the machine is changes only how long a run takes. The two
  runs share the machine with each other and with the unit tests, so their programs are scheduled
  differently throughout.
* A fresh copy of the repository starts with no data, decoders, stores or classifiers; each run
  has its own JAX compilation cache, filled as it goes (an executable loaded from it is the one
  the compiler would have built, so the numbers are unchanged).
* Every notebook writes its promised results.
* The rerun restores every expensive stage (dataset, decoders, latent stores, classifiers and
  the data-efficiency runs) from the cache and reproduces the numbers.

Wall times are printed, not asserted: machines are noisy.
"""

import re

import pytest
import smoke_runs

from enflens.study import pipeline
from enflens.study.results import PROMISED_KEYS

pytestmark = pytest.mark.slow

#: Keys whose values are timings (the only numbers allowed to differ between two runs).
TIMING_KEY = re.compile(r"seconds|per_second|^ms_")
#: Keys saying whether a stage came from the cache (a fresh run and a rerun differ in them).
CACHE_KEY = re.compile(r"^(cached|reused_cached|restored_from_cache)$")


def _strip_timings(obj, key: re.Pattern = TIMING_KEY):
    """``obj`` without the entries (at any depth) whose key matches ``key``."""
    if isinstance(obj, dict):
        return {k: _strip_timings(v, key) for k, v in obj.items() if not key.search(str(k))}
    if isinstance(obj, list):
        return [_strip_timings(v, key) for v in obj]
    return obj


def _differences(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only in one run" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += _differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in _differences(x, y, f"{path}[{i}]")]  # fmt: skip
    return [] if a == b else [f"{path}: {str(a)[:80]} != {str(b)[:80]}"]


@pytest.fixture(scope="module")
def runs():
    """The three runs, started by conftest.py at the start of the session (tests/smoke_runs.py)."""
    first, second, rerun = smoke_runs.wait()
    print("\nsmoke wall time per notebook (fresh | fresh, run alongside | rerun from cache):")
    for name in first["timings"]:
        t = [r["timings"][name] for r in (first, second, rerun)]
        print(f"  {name:26s} {t[0]:7.1f} s | {t[1]:7.1f} s | {t[2]:7.1f} s")
    return first["results"], second["results"], rerun["results"]


def test_two_fresh_runs_give_identical_non_timing_numbers(runs):
    first, second, _ = runs
    assert sorted(first) == sorted(second)
    diffs = _differences(_strip_timings(first), _strip_timings(second))
    assert not diffs, "the two fresh smoke runs differ:\n" + "\n".join(diffs[:40])


def test_timing_filter_keeps_the_science():
    kept = _strip_timings({"train_seconds": 1.0, "psnr_db": {"enf": 30.0},
                           "images_per_second": 5, "steps": [{"seconds": 2, "loss": 0.1}]})
    assert kept == {"psnr_db": {"enf": 30.0}, "steps": [{"loss": 0.1}]}
    rows = {"rows": [{"ms_per_outer_step": 3.0, "params": 7}]}
    assert _strip_timings(rows) == {"rows": [{"params": 7}]}
    assert _strip_timings({"cached": True, "psnr": 1.0}, CACHE_KEY) == {"psnr": 1.0}
    assert _differences({"a": [1, 2]}, {"a": [1, 3]}) == [".a[1]: 2 != 3"]


def test_every_notebook_ran_and_wrote_its_promised_results(runs):
    first, _, _ = runs
    names = [s.stem for s in pipeline.notebook_sources()]
    assert len(names) == 6 and set(names) <= set(first)
    for name in names:
        missing = [k for k in PROMISED_KEYS[name] if k not in first[name]]
        assert not missing, f"results/smoke/{name}.json lacks promised keys {missing}"
    metrics = first["metrics"]
    assert metrics["profile"] == "smoke"
    for name, keys in PROMISED_KEYS.items():
        scope = metrics if name == "06_results" else metrics[name]
        missing = [k for k in keys if k not in scope]
        assert not missing, f"metrics.json: {name} lacks {missing}"


def test_rerun_restores_every_cached_stage_and_reproduces_the_numbers(runs):
    first, _, rerun = runs
    assert rerun["01_lensing_data"]["reused_cached_dataset"] is True
    assert first["01_lensing_data"]["reused_cached_dataset"] is False
    assert all(rerun["03_meta_learning"]["reused_cached"].values())
    assert not any(first["03_meta_learning"]["reused_cached"].values())
    assert all(m["restored_from_cache"] for m in rerun["05_classifiers"]["models"].values())
    for points in rerun["06_results"]["data_efficiency"].values():
        assert all(p["restored_from_cache"] for p in points)
    assert all(row["cached"] for row in rerun["03_meta_learning"]["ablation"]["rows"])
    for name in ("03_meta_learning", "05_classifiers"):
        keep = lambda r: _strip_timings(  # noqa: E731
            _strip_timings({k: v for k, v in r.items() if k != "models"}), CACHE_KEY
        )
        assert not _differences(keep(first[name]), keep(rerun[name]))
    for name, m in first["05_classifiers"]["models"].items():
        assert rerun["05_classifiers"]["models"][name]["accuracy"] == m["accuracy"]
