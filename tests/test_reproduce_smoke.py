"""End to end: `make reproduce PROFILE=smoke` from scratch in two fresh copies of the repository,
one of them under CPU load, then once more in the first copy from its cache.

* Reproducible by construction: the two fresh runs must write identical results JSON for every
  number that is not a timing (keys naming ``seconds`` or ``per_second``, or starting ``ms_``);
  budgets are step counts, so how busy the machine is changes only how long a run takes.
* The three runs share one JAX compilation cache (the first fills it): a fresh copy of the
  repository still starts with no data, decoders, stores or classifiers, and a compiled
  executable loaded from the cache is the one the compiler would have built, so the numbers are
  unchanged; what it saves is the repeated compilation, most of a smoke run's time.
* Every notebook writes its promised results.
* The rerun restores every expensive stage (dataset, decoders, latent stores, classifiers and
  the data-efficiency runs) from the cache and reproduces the numbers.

Wall times are printed, not asserted: machines are noisy.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from enflens.io import REPO_ROOT
from enflens.study import pipeline
from enflens.study.results import PROMISED_KEYS

pytestmark = pytest.mark.slow

#: Keys whose values are timings (the only numbers allowed to differ between two runs).
TIMING_KEY = re.compile(r"seconds|per_second|^ms_")
#: Keys saying whether a stage came from the cache (a fresh run and a rerun differ in them).
CACHE_KEY = re.compile(r"^(cached|reused_cached|restored_from_cache)$")


def _copy_repo(dst: Path) -> Path:
    """The tracked (and untracked, not ignored) files of this checkout, as a fresh clone has."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT, check=True,
        capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, files):
        src = REPO_ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def _run_smoke(root: Path, jax_cache: Path, *, load: bool = False) -> dict[str, dict]:
    """Run the smoke pipeline in ``root`` (its own ``lib`` on the path); return its results."""
    env = {**os.environ, "PYTHONPATH": str(root / "lib"), "MPLBACKEND": "Agg",
           "JAX_COMPILATION_CACHE_DIR": str(jax_cache)}  # fmt: skip
    burners = []
    if load:  # two busy processes: the 2-core CI machine is fully loaded during the run
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "enflens.study.pipeline", "run", "--profile", "smoke"],
            cwd=root, env=env, capture_output=True, text=True,
        )  # fmt: skip
    finally:
        for b in burners:
            b.kill()
    assert proc.returncode == 0, f"smoke run in {root} failed:\n{proc.stdout[-3000:]}{proc.stderr}"
    folder = root / "results" / "smoke"
    results = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    assert results, f"the smoke run wrote no results under {folder}"
    timings = json.loads((root / "runs" / "smoke" / "timings.json").read_text())
    return {"results": results, "timings": timings}


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
def runs(tmp_path_factory):
    first_root = _copy_repo(tmp_path_factory.mktemp("clone_a"))
    second_root = _copy_repo(tmp_path_factory.mktemp("clone_b"))
    jax_cache = tmp_path_factory.mktemp("jax_cache")
    first = _run_smoke(first_root, jax_cache)
    loaded = _run_smoke(second_root, jax_cache, load=True)
    rerun = _run_smoke(first_root, jax_cache)
    print("\nsmoke wall time per notebook (fresh | fresh under load | rerun from cache):")
    for name in first["timings"]:
        t = [r["timings"][name] for r in (first, loaded, rerun)]
        print(f"  {name:26s} {t[0]:7.1f} s | {t[1]:7.1f} s | {t[2]:7.1f} s")
    return first["results"], loaded["results"], rerun["results"]


def test_two_fresh_runs_give_identical_non_timing_numbers(runs):
    first, loaded, _ = runs
    assert sorted(first) == sorted(loaded)
    diffs = _differences(_strip_timings(first), _strip_timings(loaded))
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
