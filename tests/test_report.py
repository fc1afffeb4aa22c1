"""metrics.json collection for notebook 06."""

import json

import pytest

from enflens.study import report
from enflens.study.results import PROMISED_KEYS


def test_collect_reads_every_notebook_and_names_missing_file(tmp_path):
    for name, keys in PROMISED_KEYS.items():
        if name != "06_results":
            (tmp_path / f"{name}.json").write_text(json.dumps({k: 1 for k in keys}))
    out = report.collect("smoke", tmp_path)
    for key in PROMISED_KEYS["06_results"]:
        assert key in out
    assert out["03_meta_learning"]["psnr_db"] == 1
    assert out["package_versions"]["jax"] != "not installed"
    (tmp_path / "03_meta_learning.json").unlink()
    with pytest.raises(FileNotFoundError, match="03_meta_learning.json"):
        report.collect("smoke", tmp_path)
    (tmp_path / "03_meta_learning.json").write_text("{not json")
    with pytest.raises(ValueError, match="03_meta_learning.json"):
        report.collect("smoke", tmp_path)
