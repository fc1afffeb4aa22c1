"""End to end: `make reproduce PROFILE=smoke`, run twice from this checkout.

The first run executes every notebook with the smoke profile through papermill (the code path
of `make reproduce`) and must write every promised result. The second run must find every
expensive stage (dataset, decoders, latent stores, classifiers) in the cache instead of
recomputing it; its wall times are printed next to the first run's (timing is reported, not
asserted: machines are noisy).
"""

import json
import shutil

import pytest

from enflens.study import pipeline
from enflens.study.results import PROMISED_KEYS, repo_path

pytestmark = pytest.mark.slow


def _results(name: str) -> dict:
    path = repo_path("results", "smoke", f"{name}.json")
    assert path.exists(), f"{name} did not write {path}"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def two_smoke_runs():
    # Fresh smoke outputs; cached stages under data/ and checkpoints/ are keyed by a hash of
    # their parameters, so in CI (a clean clone) the first run computes every stage.
    for folder in ("runs/smoke", "results/smoke", "figures/smoke"):
        shutil.rmtree(repo_path(folder), ignore_errors=True)
    first = pipeline.run("smoke")
    first_results = {name: _results(name) for name in first}
    second = pipeline.run("smoke")
    second_results = {name: _results(name) for name in second}
    print("\nsmoke wall time per notebook (first run -> rerun with cached stages):")
    for name in first:
        print(f"  {name:26s} {first[name]:7.1f} s -> {second[name]:7.1f} s")
    print(f"  {'total':26s} {sum(first.values()):7.1f} s -> {sum(second.values()):7.1f} s")
    return first_results, second_results


def test_every_notebook_ran_and_wrote_its_promised_results(two_smoke_runs):
    first, _ = two_smoke_runs
    names = [s.stem for s in pipeline.notebook_sources()]
    assert sorted(first) == sorted(names) and len(names) == 6
    for name, data in first.items():
        assert repo_path("runs", "smoke", f"{name}.ipynb").exists()
        missing = [k for k in PROMISED_KEYS[name] if k not in data]
        assert not missing, f"results/smoke/{name}.json lacks promised keys {missing}"
    assert repo_path("results", "smoke", "metrics.json").exists()


def test_metrics_json_contains_every_promised_key(two_smoke_runs):
    metrics = json.loads(repo_path("results", "smoke", "metrics.json").read_text())
    assert metrics["profile"] == "smoke"
    for name, keys in PROMISED_KEYS.items():
        if name == "06_results":
            missing = [k for k in keys if k not in metrics]
        else:
            missing = [k for k in keys if k not in metrics[name]]
        assert not missing, f"metrics.json: {name} lacks {missing}"
    assert set(metrics["notebook_seconds"]) == set(PROMISED_KEYS)


def test_second_run_reuses_every_cached_stage(two_smoke_runs):
    first, second = two_smoke_runs
    assert second["01_lensing_data"]["reused_cached_dataset"] is True
    assert all(second["03_meta_learning"]["reused_cached"].values())
    assert all(m["restored_from_cache"] for m in second["05_classifiers"]["models"].values())
    for points in second["06_results"]["data_efficiency"].values():
        assert all(p["restored_from_cache"] for p in points)
    # The rerun reproduces the numbers, not just the files.
    for name, m in first["05_classifiers"]["models"].items():
        assert second["05_classifiers"]["models"][name]["accuracy"] == m["accuracy"]
