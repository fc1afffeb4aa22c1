"""Orbax checkpoints: round trips, resume reproduces an uninterrupted run, decoder files."""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest

from enflens import checkpoint as C
from enflens.fields import adapters
from enflens.fields.cnf import CNFConfig
from enflens.metalearn import encode as encode_mod
from enflens.metalearn import outer

SIZE = 12


def images(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random blobs in [0, 1] (n, SIZE, SIZE)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1 : 1 : SIZE * 1j, -1 : 1 : SIZE * 1j]
    c = rng.uniform(-0.5, 0.5, (n, 2, 1, 1))
    img = np.exp(-((xx - c[:, 0]) ** 2 + (yy - c[:, 1]) ** 2) / 0.2)
    return (img / img.max(axis=(1, 2), keepdims=True)).astype(np.float32)


@functools.cache
def adapter() -> adapters.FieldAdapter:
    return adapters.cnf_adapter(CNFConfig(latent_dim=8, hidden=16, num_layers=2, w0=5.0), seed=3)


CFG = outer.MetaConfig(
    inner_steps=2, inner_pixels=36, outer_pixels=48, batch_size=4, num_steps=6, outer_lr=1e-2,
    warmup_steps=2, checkpoint_every=2, eval_every=0, seed=5,
)  # fmt: skip


def _leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def test_interrupted_run_resumes_to_the_same_parameters(tmp_path):
    ad = adapter()
    data = images(16)
    full = outer.meta_train(ad, data, CFG, progress=False)
    ckpt = tmp_path / "run"
    part = outer.meta_train(ad, data, CFG, checkpoint_dir=ckpt, stop_at=3, progress=False)
    assert int(part.state.step) == 3
    manager = C.CheckpointManager(ckpt)
    assert manager.latest_step() == 3 and 2 in manager.all_steps()
    manager.close()
    resumed = outer.meta_train(ad, data, CFG, checkpoint_dir=ckpt, progress=False)
    assert int(resumed.state.step) == CFG.num_steps
    for a, b in zip(_leaves(full.state), _leaves(resumed.state), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # negative control: a run with another data seed ends elsewhere
    cfg6 = outer.MetaConfig(**{**CFG.__dict__, "seed": 6})
    other = outer.meta_train(ad, data, cfg6, progress=False)
    diffs = [
        np.abs(a - b).max() for a, b in zip(_leaves(full.state), _leaves(other.state), strict=True)
    ]
    assert max(diffs) > 1e-4


def test_checkpoint_round_trip_and_shape_mismatch(tmp_path):
    ad = adapter()
    state = outer.init_state(ad, CFG)
    manager = C.CheckpointManager(tmp_path / "ck")
    manager.save(7, state)
    restored = manager.restore(outer.init_state(adapter(), CFG))
    for a, b in zip(_leaves(state), _leaves(restored), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    big = adapters.cnf_adapter(CNFConfig(latent_dim=8, hidden=20, num_layers=2), seed=3)
    with pytest.raises(ValueError, match="ck"):
        manager.restore(outer.init_state(big, CFG))
    manager.close()
    with pytest.raises(FileNotFoundError, match="empty"):
        C.CheckpointManager(tmp_path / "empty").restore(state)


def test_save_and_load_trained_decoder(tmp_path):
    ad = adapter()
    params = outer.meta_train(ad, images(8), CFG, progress=False).state.params
    path = tmp_path / "decoder"
    digest = adapters.save_trained(path, ad, params, (SIZE, SIZE, 1), extra={"note": "test"})
    assert digest == C.tree_hash(params)
    ad2, params2, meta = adapters.load_trained(path)
    assert meta["hash"] == digest and meta["kind"] == "cnf" and meta["note"] == "test"
    lat1, s1 = encode_mod.fit_latents(ad, params, images(3, seed=1), steps=2)
    lat2, s2 = encode_mod.fit_latents(ad2, params2, images(3, seed=1), steps=2)
    np.testing.assert_array_equal(lat1, lat2)
    # overwrite keeps a valid checkpoint, hash changes with the content
    params3 = {**params, "log_lrs": params["log_lrs"] + 1.0}
    assert adapters.save_trained(path, ad, params3, (SIZE, SIZE, 1)) != digest
    assert not list(tmp_path.glob(".decoder*"))  # no temporary leftovers
    # a tampered meta.json hash is detected, naming the file
    meta_path = path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "hash": "0" * 16}))
    with pytest.raises(ValueError, match="decoder"):
        adapters.load_trained(path)


def test_tree_hash_sensitive_to_values():
    tree = {"a": np.arange(3, dtype=np.float32), "b": np.zeros(2, np.float32)}
    h = C.tree_hash(tree)
    assert h == C.tree_hash({"a": np.arange(3, dtype=np.float32), "b": np.zeros(2, np.float32)})
    assert h != C.tree_hash({"a": np.arange(3, dtype=np.float32), "b": np.ones(2, np.float32)})
