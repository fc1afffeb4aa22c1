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


def _record(seconds, accuracy=0.5, steps=10):
    return {"train_seconds": seconds, "accuracy": accuracy, "steps": steps}


def test_pipeline_costs_charge_latent_routes_for_their_field_and_cnns_only_for_training():
    meta03 = {"train_seconds": {"enf": 100.0, "cnf": 50.0},
              "encode_seconds": {"enf": 20.0, "cnf": None}}  # fmt: skip
    models = {"enf_ponita": _record(30.0), "enf_mlp": _record(5.0), "cnf_mlp": _record(4.0),
              "resnet18": _record(200.0)}  # fmt: skip
    costs = report.pipeline_costs(meta03, models)
    assert costs["enf_ponita"] == {"meta_learning_seconds": 100.0, "encoding_seconds": 20.0,
                                   "classifier_seconds": 30.0, "total_seconds": 150.0}  # fmt: skip
    assert costs["enf_mlp"]["total_seconds"] == 125.0  # the shared field is charged to every route
    assert costs["cnf_mlp"]["encoding_seconds"] is None
    assert costs["cnf_mlp"]["total_seconds"] is None
    assert costs["resnet18"] == {"meta_learning_seconds": 0.0, "encoding_seconds": 0.0,
                                 "classifier_seconds": 200.0, "total_seconds": 200.0}  # fmt: skip
    table = report.pipeline_costs_table(costs, models)
    assert table.count("\n") == 1 + len(models) and "| cnf_mlp | 0.5000 | 10 | 50 | - |" in table
    with pytest.raises(KeyError, match="enf_mlp.*enf"):
        report.pipeline_costs({"train_seconds": {}, "encode_seconds": {}}, {"enf_mlp": _record(1)})


def test_host_cpu_reads_the_model_and_vector_isa(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n"
    )
    assert report.host_cpu(info) == {"model": "AMD EPYC 7B13", "isa": ["avx2"]}
    info.write_text("model name\t: Intel Xeon\nflags\t\t: avx avx2 avx512f avx512bw\n")
    assert report.host_cpu(info) == {"model": "Intel Xeon", "isa": ["avx2", "avx512f"]}
    info.write_text("cpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\nflags\t\t: avx2\n")
    assert report.host_cpu(info) == {"model": "AMD EPYC (family 26, model 2)", "isa": ["avx2"]}
    missing = report.host_cpu(tmp_path / "absent")  # no /proc (macOS): no ISA, a model still
    assert missing["isa"] == [] and isinstance(missing["model"], str)
