"""End to end: `make reproduce PROFILE=smoke` equivalent, run from this checkout.

Runs every notebook with the smoke profile through papermill (the same code path as
`make reproduce`) and checks that each wrote the results it promises.
"""

import json

import pytest

from enflens import pipeline
from enflens.results import PROMISED_KEYS, repo_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run():
    return pipeline.run("smoke")


def test_every_notebook_ran(smoke_run):
    names = [s.stem for s in pipeline.notebook_sources()]
    assert names, "no notebooks found"
    for name in names:
        assert name in smoke_run
        assert repo_path("runs", "smoke", f"{name}.ipynb").exists()


def test_every_notebook_wrote_its_promised_results(smoke_run):
    for name in smoke_run:
        path = repo_path("results", "smoke", f"{name}.json")
        assert path.exists(), f"{name} did not write {path}"
        data = json.loads(path.read_text())
        missing = [k for k in PROMISED_KEYS.get(name, ()) if k not in data]
        assert not missing, f"{path} lacks promised keys {missing}"
        assert data.get("profile", "smoke") == "smoke"
