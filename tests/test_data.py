"""Tests of the HDF5 dataset store: generation, worker invariance, round trip, errors, import."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from enflens import data as D
from enflens.data import lensing as L
from enflens.testing import lenstronomy_render

N, NV, NT = 4, 2, 1  # per class


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small Model II store made with one worker, and the same made with two."""
    folder = tmp_path_factory.mktemp("store")
    one = D.generate("model_ii", N, 5, folder / "one.h5", n_val=NV, n_test=NT, progress=False)
    two = D.generate(
        "model_ii", N, 5, folder / "two.h5", workers=2, n_val=NV, n_test=NT, chunk_size=5
    )
    return one, two


def test_worker_count_does_not_change_images(store):
    one, two = store
    for split in D.SPLITS:
        a, b = D.load(one, split), D.load(two, split)
        assert np.array_equal(a.images, b.images)
        assert np.array_equal(a.labels, b.labels)
        for k in a.params:
            np.testing.assert_array_equal(a.params[k], b.params[k])
        assert a.attrs[f"sha256_{split}"] == b.attrs[f"sha256_{split}"]


def test_round_trip_shapes_and_attributes(store):
    one, _ = store
    sizes = {"train": 3 * N, "val": 3 * NV, "test": 3 * NT}
    for split, n in sizes.items():
        s = D.load(one, split, recipe="model_ii", verify=True)
        assert s.images.shape == (n, 64, 64) and s.images.dtype == np.float32
        assert s.images.min() >= 0.0
        np.testing.assert_array_equal(s.images.max(axis=(1, 2)), 1.0)
        np.testing.assert_array_equal(s.labels, np.arange(n) % 3)
        assert s.params["sub_mass"].shape == (n, 25) and s.params["sub_pos"].shape == (n, 25, 2)
        axion = s.labels == 2
        assert np.all(np.isfinite(s.params["m_a"][axion])) and np.all(
            np.isnan(s.params["m_a"][~axion])
        )
        assert np.all(s.params["n_sub"][s.labels == 1] == 25)
    assert s.class_names == ("no_sub", "cdm", "axion")
    assert s.attrs["recipe"] == "model_ii" and s.attrs["seed"] == 5
    assert '"pixel_scale": 0.101' in s.attrs["kwargs_band"]
    # splits use disjoint seed sequences
    tr, va = D.load(one, "train"), D.load(one, "val")
    assert not np.array_equal(tr.images[0], va.images[0])
    assert not np.array_equal(tr.params["source_center"][:1], va.params["source_center"][:1])


@pytest.mark.parametrize("split,index", [("train", 4), ("test", 2), ("val", 0)])
def test_stored_sample_equals_lenstronomy_render_of_its_kwargs(store, split, index):
    one, _ = store
    p = D.sample_params(one, split, index)
    s = D.load(one, split)
    assert p["label"] == s.labels[index]
    assert (p["m_a"] is not None) == (p["label"] == 2)
    clean = lenstronomy_render(p, noise=False)
    raw = lenstronomy_render(p)
    np.testing.assert_array_equal(raw.max(), s.image_scale[index])
    want = (np.clip(raw, 0, None) / raw.max()).astype(np.float32)
    np.testing.assert_array_equal(want, s.images[index])
    np.testing.assert_array_equal(L.render(p, noise=False), clean)


def test_load_errors_name_the_file(store, tmp_path):
    one, _ = store
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        D.load(tmp_path / "nope.h5", "train")
    with pytest.raises(ValueError, match=r"one\.h5.*recipe 'model_ii', expected 'model_iii'"):
        D.load(one, "train", recipe="model_iii")
    with pytest.raises(ValueError, match=r"no split 'holdout'.*train"):
        D.load(one, "holdout")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(one.read_bytes()[: one.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut\.h5.*(truncated|corrupt)"):
        D.load(cut, "train")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(ValueError, match=r"junk\.h5"):
        D.load(junk, "train")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=[1])
    with pytest.raises(ValueError, match=r"other\.h5: not an enflens lensing store"):
        D.load(other, "train")
    with pytest.raises(IndexError, match="out of range"):
        D.sample_params(one, "val", 99)


def test_verify_detects_modified_images(store, tmp_path):
    one, _ = store
    bad = tmp_path / "bad.h5"
    shutil.copy(one, bad)
    with h5py.File(bad, "r+") as f:
        f["val/images"][0, 3, 3] += 0.25
    D.load(bad, "val", verify=False)  # without verify the in-range change goes unnoticed
    with pytest.raises(ValueError, match=r"bad\.h5 \[val/images\]: sha256"):
        D.load(bad, "val")
    D.load(bad, "train", verify=True)  # other splits still verify


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe"):
        D.generate("model_iv", 2, 0, tmp_path / "x.h5")
    with pytest.raises(ValueError, match="n_per_class"):
        D.generate("model_ii", 0, 0, tmp_path / "x.h5")
    with pytest.raises(ValueError, match="seed"):
        D.generate("model_ii", 2, -1, tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["generate", "--recipe", "model_x", "--n-per-class", "2", "--seed", "0", "--out", "a"],
         "invalid choice"),
        (["generate", "--recipe", "model_ii", "--n-per-class", "0", "--seed", "0", "--out", "a"],
         "--n-per-class"),
        (["generate", "--recipe", "model_ii", "--n-per-class", "2", "--seed", "0"], "--out"),
        (["generate", "--recipe", "model_ii", "--n-per-class", "2", "--seed", "0", "--out", "a",
          "--workers", "0"], "--workers"),
        (["frobnicate"], "invalid choice"),
    ],
)  # fmt: skip
def test_cli_rejects_bad_arguments(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        D.main(argv)
    assert e.value.code == 2
    assert needle in capsys.readouterr().err


def test_cli_generate_and_info(tmp_path, capsys):
    out = tmp_path / "cli.h5"
    argv = ["generate", "--recipe", "model_iii", "--n-per-class", "1", "--seed", "3"]
    assert D.main([*argv, "--out", str(out), "--n-val", "0", "--n-test", "1", "--no-progress"]) == 0
    s = D.load(out, "test", recipe="model_iii", verify=True)
    assert s.images.shape == (3, 64, 64)
    assert len(D.load(out, "val")) == 0
    assert D.main(["info", str(out)]) == 0
    assert "recipe: model_iii" in capsys.readouterr().out


def _deeplense_folder(root, names=("no_sub", "cdm", "axion"), shape=(64, 64)):
    rng = np.random.default_rng(0)
    for k, name in enumerate(names):
        d = root / name
        d.mkdir(parents=True)
        for i in range(2 + k):
            img = rng.uniform(0, 5, shape)
            if k == 2:
                arr = np.empty(2, dtype=object)
                arr[0], arr[1] = img, 10.0 ** (-23 - 0.1 * i)
                np.save(d / f"axion_sim_{i}.npy", arr, allow_pickle=True)
            else:
                np.save(d / f"sim_{i}.npy", img[None] if k == 1 else img)
    return root


def test_import_deeplense(tmp_path):
    folder = _deeplense_folder(tmp_path / "dl", names=("no_sub", "subhalo", "vort"))
    out = D.import_deeplense(folder, tmp_path / "dl.h5", recipe="model_ii")
    s = D.load(out, "train", recipe="model_ii", verify=True)
    np.testing.assert_array_equal(s.labels, [0, 0, 1, 1, 1, 2, 2, 2, 2])
    np.testing.assert_allclose(s.params["m_a"][5:], 10.0 ** (-23 - 0.1 * np.arange(4)))
    assert np.all(np.isnan(s.params["m_a"][:5]))
    raw = np.load(folder / "no_sub" / "sim_1.npy")
    np.testing.assert_allclose(s.images[1], np.clip(raw, 0, None) / raw.max(), rtol=1e-6)
    assert s.image_scale[1] == raw.max()
    assert s.params["source_file"][5].decode().startswith("vort/axion_sim_0")
    with pytest.raises(ValueError, match="imported"):
        D.sample_params(out, "train", 0)
    # split sub-folders are kept as splits
    _deeplense_folder(tmp_path / "dl2" / "train")
    _deeplense_folder(tmp_path / "dl2" / "val")
    out2 = D.main(["import-deeplense", str(tmp_path / "dl2"), "--out", str(tmp_path / "b.h5")])
    assert out2 == 0 and len(D.load(tmp_path / "b.h5", "val")) == 9


def test_import_deeplense_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        D.import_deeplense(tmp_path / "missing_dir", tmp_path / "x.h5")
    folder = _deeplense_folder(tmp_path / "a", names=("no_sub", "cdm", "wdm"))
    with pytest.raises(ValueError, match=r"missing \['axion'\].*unrecognised \['wdm'\]"):
        D.import_deeplense(folder, tmp_path / "x.h5")
    folder = _deeplense_folder(tmp_path / "b")
    np.save(folder / "cdm" / "odd.npy", np.ones((32, 32)))
    with pytest.raises(ValueError, match=r"odd\.npy: image shape \(32, 32\) differs"):
        D.import_deeplense(folder, tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()
