"""The cached stages of the study (dataset, decoders, latent stores), run in-process on a tiny
config inside a temporary repository root: step budgets, cache reuse and invalidation, and
bitwise reproducibility of a retrained decoder."""

import dataclasses

import jax
import numpy as np
import pytest

from enflens import io
from enflens.study import cache, stages

ENF = {"num_latents": 4, "latent_dim": 4, "hidden": 8, "num_heads": 2, "k_nearest": 4,
       "num_rff": 4}  # fmt: skip
FIELDS = {"enf_config": ENF, "enf_adapter": {}, "cnf_config": {"hidden": 8, "num_layers": 2},
          "cnf_adapter": {}, "seed": 0}  # fmt: skip
META = {"inner_steps": 1, "inner_pixels": 64, "outer_pixels": 64, "batch_size": 2,
        "num_steps": 3, "eval_every": 3, "warmup_steps": 1}  # fmt: skip
FIT = {"steps": 1, "pixels": 64, "sampling": "stratified", "batch_size": 4, "seed": 0}


@pytest.fixture(scope="module")
def tmp_repo(tmp_path_factory):
    """A temporary repository root for every cached stage of this module."""
    root = tmp_path_factory.mktemp("repo")
    mp = pytest.MonkeyPatch()
    mp.setattr(io, "REPO_ROOT", root)
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def ds(tmp_repo):
    return stages.dataset("model_ii", 2, 1, 1, 0, workers=1, progress=False)


def test_dataset_stage_generates_then_restores(tmp_repo, ds):
    assert not ds.cached and ds.path.parent == tmp_repo / "data"
    assert {s: len(d) for s, d in ds.splits.items()} == {"train": 6, "val": 3, "test": 3}
    again = stages.dataset("model_ii", 2, 1, 1, 0, workers=1, progress=False)
    assert again.cached and again.path == ds.path and again.seconds == 0.0
    np.testing.assert_array_equal(again.splits["train"].images, ds.splits["train"].images)
    assert stages.dataset_path("model_ii", 2, 1, 1, 1)[0] != ds.path  # another seed
    with pytest.raises(FileNotFoundError, match="notebook 01"):
        stages.dataset("model_ii", 3, 1, 1, 0, generate=False)


def test_cache_keys_carry_the_stage_code_version(monkeypatch):
    before = stages.dataset_path("model_ii", 2, 1, 1, 0)
    monkeypatch.setitem(stages.STAGE_VERSIONS, "dataset", stages.STAGE_VERSIONS["dataset"] + 1)
    after = stages.dataset_path("model_ii", 2, 1, 1, 0)
    assert after[0] != before[0] and after[1]["code_version"] == before[1]["code_version"] + 1
    with pytest.raises(ValueError, match="unknown stage"):
        stages.stage_key("nope")


def test_cache_keys_of_the_jax_stages_carry_the_device_count_when_there_are_several(monkeypatch):
    one = stages.stage_key("decoder", kind="enf")
    assert "devices" not in one  # one-device keys (the committed run's) are unchanged
    monkeypatch.setattr(stages.parallel, "num_devices", lambda mesh: 4)
    four = stages.stage_key("decoder", kind="enf")
    assert four == {**one, "devices": 4} and cache.param_hash(four) != cache.param_hash(one)
    for stage in ("latents", "classifier", "data_efficiency", "rotation"):
        assert stages.stage_key(stage)["devices"] == 4
    assert "devices" not in stages.stage_key("dataset")  # numpy / lenstronomy: any layout


def test_is_cached_needs_the_output_and_its_parameter_record(tmp_path):
    out = tmp_path / "x.h5"
    assert not cache.is_cached(out)
    out.write_bytes(b"1")
    assert not cache.is_cached(out)  # no record: an interrupted or foreign file
    cache.record_params(out, {"a": 1})
    assert cache.is_cached(out)


def test_recorded_seconds_round_trip_and_refuse_a_malformed_record(tmp_path):
    out = tmp_path / "x.h5"
    out.write_bytes(b"1")
    assert cache.recorded_seconds(out) is None  # written before timings were recorded
    cache.record_seconds(out, 12.5)
    assert cache.recorded_seconds(out) == 12.5
    side = tmp_path / "x.h5.seconds.json"
    for bad in ("{not json", '{"s": 1}', '{"seconds": "fast"}', "[1]"):
        side.write_text(bad)
        with pytest.raises(ValueError, match="x.h5.seconds.json"):
            cache.recorded_seconds(out)
    cache.record_params(out, {"a": 1})
    cache.forget(out)
    assert not side.exists() and not cache.is_cached(out)


def _decoder(ds, kind="enf", **meta):
    adapter = stages.field_adapter(kind, **FIELDS)
    return stages.decoder(kind, ds, adapter=adapter, meta={**META, **meta}, seed=0,
                          eval_images=2, progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def enf(ds):
    return _decoder(ds)


def test_decoder_runs_exactly_its_steps_then_restores(ds, enf):
    assert not enf.cached and enf.meta["outer_steps"] == 3
    assert [h["step"] for h in enf.meta["history"] if "val_psnr_per_step" in h] == [3]
    again = _decoder(ds)
    assert again.cached and again.path == enf.path and again.meta["hash"] == enf.meta["hash"]
    longer = _decoder(ds, num_steps=4)  # the step count is part of the cache key
    assert not longer.cached and longer.path != enf.path and longer.meta["outer_steps"] == 4


def test_a_retrained_decoder_is_bitwise_identical(ds, enf, tmp_path, monkeypatch):
    monkeypatch.setattr(io, "REPO_ROOT", tmp_path)  # an empty cache: train again from scratch
    fresh = stages.dataset("model_ii", 2, 1, 1, 0, workers=1, progress=False)
    again = _decoder(fresh)
    assert not again.cached and again.path.name == enf.path.name
    same = jax.tree.map(np.array_equal, again.params, enf.params)
    assert all(jax.tree.leaves(same))
    assert again.meta["hash"] == enf.meta["hash"]


def test_cnf_gets_the_enf_latent_size(ds):
    enf = stages.field_adapter("enf", **FIELDS)
    cnf = stages.field_adapter("cnf", **FIELDS)
    assert stages.adapters.latent_floats(cnf) == stages.adapters.latent_floats(enf) == 4 * 7
    with pytest.raises(ValueError, match="unknown kind"):
        stages.field_adapter("gnn", **FIELDS)
    with pytest.raises(ValueError, match="unknown keys"):
        stages.field_adapter("enf", **{**FIELDS, "enf_config": {**ENF, "hiden": 3}})


def test_latent_stores_encode_every_split_then_restore(ds, enf):
    lat = stages.latent_stores(enf, ds, **FIT, progress=False)
    assert set(lat.paths) == {"train", "val", "test"} and not any(lat.cached.values())
    for split, store in lat.stores.items():
        np.testing.assert_array_equal(store.labels, ds.splits[split].labels)
        assert store.latents.positions.shape == (len(ds.splits[split]), 4, 2)
    again = stages.latent_stores(enf, ds, **FIT, progress=False)
    assert all(again.cached.values()) and again.paths == lat.paths
    # a reused store reports the encoding time recorded when it was written, not 0
    assert all(s == 0.0 for s in again.seconds.values())
    assert again.encode_seconds == lat.encode_seconds == lat.seconds
    assert again.total_encode_seconds == pytest.approx(sum(lat.seconds.values()))
    assert all(s > 0 for s in lat.seconds.values())
    other = stages.latent_stores(enf, ds, **{**FIT, "seed": 1}, progress=False)
    assert other.paths["val"] != lat.paths["val"]
    # the reconstruction helper reproduces the stored fit of the first encoding batch
    rec = stages.reconstruct(enf, ds.splits["val"].images, **FIT)
    assert rec.shape == ds.splits["val"].images.shape
    score = -10 * np.log10(np.mean((rec - ds.splits["val"].images) ** 2, axis=(1, 2)))
    np.testing.assert_allclose(score, lat.stores["val"].psnr, atol=1e-3)


def test_stage_results_are_dataclasses_with_the_documented_fields(ds, enf):
    assert {f.name for f in dataclasses.fields(enf)} == {
        "kind", "path", "adapter", "params", "meta", "cached"
    }  # fmt: skip
    assert enf.num_params > 0 and ds.image_shape == (64, 64, 1)


def test_ablation_rows_reuse_the_study_decoder_and_change_one_thing(ds, enf):
    clean = ds.splits["val"].images[:2]  # any reference works for the bookkeeping
    rows = {"study": {}, "value mlp": {"enf_config": {"value_mlp": True}}}
    out = stages.ablation(ds, rows, field_cfg=FIELDS, meta=META, steps=3, seed=0, clean=clean,
                          fit=FIT, eval_images=2)  # fmt: skip
    study, changed = out
    assert study["cached"] and study["outer_steps"] == 3  # the study's own decoder, restored
    assert not changed["cached"] and changed["decoder_params"] > study["decoder_params"]
    assert len(study["psnr_clean"]) == FIT["steps"] + 1 and study["ms_per_outer_step"] > 0
    # the adapted fit is the one psnr_clean scores; frozen poses give a different fit
    assert study["psnr_adapted_poses"] == pytest.approx(study["psnr_clean"][-1], abs=1e-3)
    assert study["pose_motion_px"] > 0 and study["psnr_frozen_poses"] != study["psnr_clean"][-1]
    with pytest.raises(ValueError, match="unknown keys"):
        stages.ablation(ds, {"bad": {"enf": {}}}, field_cfg=FIELDS, meta=META, steps=3, seed=0,
                        clean=clean, fit=FIT)  # fmt: skip
    with pytest.raises(ValueError, match="two loss logs"):
        stages.outer_step_ms([{"step": 1, "seconds": 0.1}])
