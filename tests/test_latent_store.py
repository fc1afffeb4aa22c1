"""Latent stores: HDF5 round trips, provenance checks, clear errors, encode_dataset."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from enflens.fields import adapters
from enflens.fields.cnf import CNFConfig
from enflens.geometry import Latents
from enflens.metalearn import encode as encode_mod
from enflens.metalearn.latent_store import read_latent_store, write_latent_store


def enf_latents(n: int, rng: np.random.Generator) -> Latents:
    return Latents(
        positions=rng.normal(size=(n, 9, 2)).astype(np.float32),
        orientations=rng.normal(size=(n, 9)).astype(np.float32),
        contexts=rng.normal(size=(n, 9, 4)).astype(np.float32),
        windows=rng.uniform(0.1, 1, size=(n, 9)).astype(np.float32),
    )


def test_enf_and_cnf_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    lat = enf_latents(5, rng)
    labels = np.array([0, 1, 2, 0, 1])
    path = write_latent_store(
        tmp_path / "enf.h5", latents=lat, labels=labels, psnr=np.full(5, 31.5), kind="enf",
        model_config={"num_latents": 9, "k_nearest": None}, decoder_path="ckpt/dec",
        decoder_hash="abc123", attrs={"image_shape": (64, 64, 1)},
    )  # fmt: skip
    store = read_latent_store(path, expected_hash="abc123", expected_kind="enf")
    assert isinstance(store.latents, Latents) and len(store) == 5
    for field in ("positions", "orientations", "contexts", "windows"):
        np.testing.assert_array_equal(getattr(store.latents, field), getattr(lat, field))
    np.testing.assert_array_equal(store.labels, labels)
    assert store.model_config == {"num_latents": 9, "k_nearest": None}
    assert store.attrs["image_shape"] == [64, 64, 1]
    assert store.decoder_path == "ckpt/dec"
    z = rng.normal(size=(4, 33)).astype(np.float32)
    path = write_latent_store(
        tmp_path / "cnf.h5", latents=z, labels=np.arange(4) % 3, psnr=np.zeros(4), kind="cnf",
        model_config={}, decoder_path="d", decoder_hash="h",
    )  # fmt: skip
    np.testing.assert_array_equal(read_latent_store(path).latents, z)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnf.h5", "enf.h5"]  # no temp files


def test_wrong_decoder_hash_kind_and_missing_file(tmp_path):
    path = write_latent_store(
        tmp_path / "s.h5", latents=np.zeros((2, 3)), labels=[0, 1], psnr=[1.0, 2.0], kind="cnf",
        model_config={}, decoder_path="dec", decoder_hash="aaaa",
    )  # fmt: skip
    with pytest.raises(ValueError, match="s.h5.*bbbb|bbbb.*s.h5"):
        read_latent_store(path, expected_hash="bbbb")
    with pytest.raises(ValueError, match="s.h5"):
        read_latent_store(path, expected_kind="enf")
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        read_latent_store(tmp_path / "nope.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="other.h5: not a latent store"):
        read_latent_store(tmp_path / "other.h5")


def test_write_rejects_inconsistent_lengths(tmp_path):
    with pytest.raises(ValueError, match="leading dimension"):
        write_latent_store(
            tmp_path / "bad.h5", latents=np.zeros((3, 2)), labels=[0, 1], psnr=[0.0, 0.0],
            kind="cnf", model_config={}, decoder_path="d", decoder_hash="h",
        )  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_encode_dataset_writes_store_and_checks_image_shape(tmp_path):
    ad = adapters.cnf_adapter(CNFConfig(latent_dim=6, hidden=8, num_layers=1, w0=5.0))
    params = ad.init_params()
    rng = np.random.default_rng(1)
    imgs = rng.uniform(size=(5, 8, 8)).astype(np.float32)
    out = encode_mod.encode_dataset(
        ad, params, imgs, [0, 1, 2, 0, 1], tmp_path / "lat.h5", decoder_path="dec/x",
        decoder_hash="hh", decoder_image_shape=(8, 8, 1), steps=1, batch_size=2, progress=False,
    )  # fmt: skip
    store = read_latent_store(out, expected_hash="hh")
    assert store.latents.shape == (5, 6) and store.psnr.shape == (5,)
    assert np.all(np.isfinite(store.psnr))
    assert store.attrs["inner_steps"] == 1 and store.kind == "cnf"
    with pytest.raises(ValueError, match="dec/x"):
        encode_mod.encode_dataset(
            ad, params, rng.uniform(size=(2, 16, 16)), [0, 1], tmp_path / "lat2.h5",
            decoder_path="dec/x", decoder_hash="hh", decoder_image_shape=(8, 8, 1),
            progress=False,
        )  # fmt: skip
    assert not (tmp_path / "lat2.h5").exists()
