"""Study orchestration: stratified subsets, config-key checks, test metrics on hand-made
predictions, the rotation sign convention (images vs the SE(2) action on latents) and clear
errors for missing inputs."""

import json
import math

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from enflens.classify import registry
from enflens.evaluate import metrics, rotation
from enflens.fields.enf import ENFConfig, ENFDecoder
from enflens.geometry import Latents
from enflens.grid import make_grid, rotate_images
from enflens.metalearn.latent_store import write_latent_store
from enflens.study import classifiers as study_clf

# ----------------------------------------------------------------------------- subsample


def test_subsample_is_stratified_seeded_and_sorted():
    y = np.repeat([0, 1, 2], [30, 60, 90])
    np.random.default_rng(0).shuffle(y)
    idx = study_clf.subsample(y, 0.1, seed=3)
    assert np.all(np.diff(idx) > 0)  # sorted, no repeats
    assert np.bincount(y[idx], minlength=3).tolist() == [3, 6, 9]
    assert np.array_equal(idx, study_clf.subsample(y, 0.1, seed=3))
    assert not np.array_equal(idx, study_clf.subsample(y, 0.1, seed=4))
    assert np.bincount(y[study_clf.subsample(y, 0.001, 0)]).tolist() == [1, 1, 1]  # >= 1 per class
    assert np.array_equal(study_clf.subsample(y, 1.0, 0), np.arange(len(y)))
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            study_clf.subsample(y, bad, 0)


# ----------------------------------------------------------------------------- config keys


def _blobs(seed: int, n: int, d: int = 8):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.random.default_rng(99).normal(size=(3, d)) * 1.5
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_unknown_config_keys_are_rejected():
    tr, va = _blobs(0, 24), _blobs(1, 12)
    with pytest.raises(ValueError, match="unknown keys"):
        study_clf.cache_params("cnf_mlp", tr, va, augment_cfg={"max_angle_deg": 10})
    with pytest.raises(ValueError, match="train_cfg: unknown keys"):
        study_clf.cache_params("cnf_mlp", tr, va, train_cfg={"epoch": 1})
    with pytest.raises(ValueError, match="unknown keys"):
        study_clf.cache_params("cnf_mlp", tr, va, model_cfg={"width": 1})
    with pytest.raises(ValueError, match="model config of 'resnet18': unknown keys"):
        study_clf.cache_params("resnet18", tr, va, model_cfg={"hidden": 1})
    with pytest.raises(ValueError, match="unknown model"):
        registry.input_kind("vit")


# ----------------------------------------------------------------------------- evaluate


class _Identity(nnx.Module):
    """'Model' whose logits are its input: lets evaluate() run on hand-made predictions."""

    def __call__(self, x):
        return x


def test_evaluate_on_hand_made_predictions():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array(
        [
            [0.7, 0.2, 0.1],  # 0 -> 0
            [0.3, 0.6, 0.1],  # 0 -> 1
            [0.2, 0.5, 0.3],  # 1 -> 1
            [0.1, 0.8, 0.1],  # 1 -> 1
            [0.4, 0.1, 0.5],  # 2 -> 2
            [0.5, 0.2, 0.3],  # 2 -> 0
        ]
    )
    r = metrics.evaluate_scores(y, p)
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # class 0 scores: positives {0.7, 0.3}, negatives {0.2, 0.1, 0.4, 0.5}: pairs won 4 + 2 = 6/8
    # class 1: positives {0.5, 0.8} beat all negatives {0.2, 0.6, 0.1, 0.2} but 0.5 < 0.6: 7/8
    # class 2: positives {0.5, 0.3}: 0.5 beats all 4; 0.3 beats 0.1, 0.1, 0.1 ties 0.3: 7.5/8
    assert r["auc_per_class"] == pytest.approx({"no_sub": 6 / 8, "cdm": 7 / 8, "axion": 7.5 / 8})
    assert r["auc_macro"] == pytest.approx((6 + 7 + 7.5) / 24)
    roc = r["roc"]["cdm"]
    assert roc["fpr"][0] == 0 and roc["tpr"][-1] == 1 and len(roc["fpr"]) == len(roc["tpr"])
    # the model path: logits = log p give back the same probabilities
    r2 = metrics.evaluate(_Identity(), np.log(p).astype(np.float32), y)
    assert r2["confusion"] == r["confusion"]
    assert r2["auc_macro"] == pytest.approx(r["auc_macro"], abs=1e-6)
    json.dumps(r)  # plain Python, ready for save_results


def test_roc_curves_are_downsampled_keeping_the_ends():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 3000)
    p = rng.dirichlet(np.ones(3), 3000)
    for curve in metrics.evaluate_scores(y, p)["roc"].values():
        assert 50 < len(curve["fpr"]) <= 101
        assert (curve["fpr"][0], curve["tpr"][0], curve["fpr"][-1], curve["tpr"][-1]) == (
            0, 0, 1, 1,
        )  # fmt: skip
        assert np.all(np.diff(curve["fpr"]) >= 0) and np.all(np.diff(curve["tpr"]) >= 0)


# ----------------------------------------------------------------------------- rotations


def _pixel_of(x: float, y: float, n: int) -> tuple[int, int]:
    grid = np.asarray(make_grid(n)).reshape(n, n, 2)
    d = np.linalg.norm(grid - np.array([x, y]), axis=-1)
    return np.unravel_index(np.argmin(d), d.shape)


def test_rotating_an_image_by_90_degrees_moves_content_like_the_latent_action():
    n = 16
    img = np.zeros((1, n, n), np.float32)
    i, j = 3, 11  # an off-centre pixel
    img[0, i, j] = 1.0
    x, y = np.asarray(make_grid(n)).reshape(n, n, 2)[i, j]
    rot = np.asarray(rotate_images(img, math.pi / 2))[0]
    # counter-clockwise in the (x, y) plane: np.rot90 with k=-1 on (row = y, col = x) axes
    np.testing.assert_allclose(rot, np.rot90(img[0], k=-1), atol=1e-5)
    assert not np.allclose(rot, np.rot90(img[0], k=1), atol=1e-2)  # the other direction differs
    # the latent action with angle +90 degrees moves a latent at (x, y) to (-y, x) ...
    z = Latents(
        positions=np.array([[[x, y]]], np.float32),
        orientations=np.zeros((1, 1), np.float32),
        contexts=np.zeros((1, 1, 1), np.float32),
        windows=np.ones((1, 1), np.float32),
    )
    moved = rotation.rotate_latents(z, 90.0)
    np.testing.assert_allclose(moved.positions[0, 0], [-y, x], atol=1e-6)
    np.testing.assert_allclose(moved.orientations[0, 0], math.pi / 2, atol=1e-6)
    # ... which is where the image content went
    assert np.unravel_index(np.argmax(rot), rot.shape) == _pixel_of(-y, x, n)
    assert _pixel_of(-y, x, n) != _pixel_of(y, -x, n)  # the wrong sign would land elsewhere


def _blob(centre: np.ndarray, n: int = 64, width: float = 0.08) -> np.ndarray:
    grid = np.asarray(make_grid(n)).reshape(n, n, 2)
    return np.exp(-np.sum((grid - centre) ** 2, -1) / (2 * width**2)).astype(np.float32)


def _centroid(img: np.ndarray) -> np.ndarray:
    grid = np.asarray(make_grid(img.shape[0])).reshape(*img.shape, 2)
    return (grid * img[..., None]).sum((0, 1)) / img.sum()


def test_continuous_rotation_sign_matches_latent_action():
    rng = np.random.default_rng(7)
    for _ in range(3):
        p = rng.uniform(-0.5, 0.5, 2).astype(np.float32)
        angle = float(rng.uniform(10, 350))  # continuous, not a multiple of 90
        img = _blob(p)
        rot = np.asarray(rotate_images(img[None], math.radians(angle)))[0]
        z = Latents(
            positions=p[None, None], orientations=np.zeros((1, 1), np.float32),
            contexts=np.zeros((1, 1, 1), np.float32), windows=np.ones((1, 1), np.float32),
        )  # fmt: skip
        moved = rotation.rotate_latents(z, angle).positions[0, 0]
        assert np.linalg.norm(_centroid(rot) - moved) < 0.01
        # negative control: the opposite sense does not match
        wrong = rotation.rotate_latents(z, -angle).positions[0, 0]
        assert np.linalg.norm(_centroid(rot) - wrong) > 0.1 * np.linalg.norm(p)


def test_enf_field_of_rotated_latents_is_the_rotated_image():
    """decode(g z) == rotate_images(decode(z), a) for g = (a, 0): the latent action used for
    the rotation curves is the image rotation of rotate_images (random decoder and latents)."""
    # all latents attended (k-nearest selection makes the field discontinuous, which bilinear
    # image rotation cannot follow) and low RFF frequencies: a smooth field
    cfg = ENFConfig(num_latents=9, latent_dim=4, hidden=16, num_heads=2, k_nearest=None,
                    num_rff=8, rff_std=0.5, rff_std_value=0.5)  # fmt: skip
    dec = ENFDecoder(cfg, rngs=nnx.Rngs(0))
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    side = np.linspace(-0.5, 0.5, 3)
    pos = np.stack(np.meshgrid(side, side), -1).reshape(1, 9, 2)
    z = Latents(
        positions=jnp.asarray(pos + 0.05 * jax.random.normal(k1, (1, 9, 2)), jnp.float32),
        orientations=jax.random.uniform(k2, (1, 9), jnp.float32, 0, 2 * np.pi),
        contexts=jax.random.normal(k3, (1, 9, 4), jnp.float32),
        windows=jnp.full((1, 9), 0.5, jnp.float32),
    )
    n = 48
    coords = make_grid(n)[None]
    field = jax.jit(lambda lat: dec(coords, lat).reshape(n, n))
    base = np.asarray(field(z))[None]
    inner = np.asarray(jnp.linalg.norm(make_grid(n), axis=-1) < 0.8).reshape(n, n)
    scale = np.abs(base[0][inner]).max()
    for angle in (37.0, 201.5):
        want = np.asarray(rotate_images(base, math.radians(angle)))[0]
        got = np.asarray(field(rotation.rotate_latents(z, angle)))
        wrong = np.asarray(field(rotation.rotate_latents(z, -angle)))
        err = np.abs(got - want)[inner].max() / scale
        err_wrong = np.abs(wrong - want)[inner].max() / scale
        assert err < 0.05, err  # bilinear interpolation error only (measured ~0.02)
        assert err_wrong > 0.5, err_wrong  # negative control: the opposite sense (~1.1)


def test_rotation_angles_and_latent_action_of_an_invariant_model():
    a = rotation.rotation_angles(6, seed=0)
    assert a[0] == 0 and len(a) == 6 and np.all(np.diff(a) > 0) and a[-1] < 360
    assert np.all(np.mod(a[1:], 45) > 1e-6)  # not the convenient angles
    assert np.array_equal(a, rotation.rotation_angles(6, seed=0))
    assert rotation.mean_rotated([0, 10, 20], [1.0, 0.5, 0.7]) == pytest.approx(0.6)

    rng = np.random.default_rng(0)
    z = Latents(
        positions=rng.uniform(-1, 1, (12, 4, 2)).astype(np.float32),
        orientations=rng.uniform(0, 6, (12, 4)).astype(np.float32),
        contexts=rng.normal(size=(12, 4, 3)).astype(np.float32),
        windows=np.full((12, 4), 0.4, np.float32),
    )
    y = rng.integers(0, 3, 12)
    ponita = registry.build_model("enf_ponita", z, {"hidden": 8, "basis_dim": 8, "layers": 1}, 0)
    curve = rotation.latent_action_curve(ponita, z, y, a)
    assert len(curve) == 6 and len(set(curve)) == 1  # invariant: same predictions at any angle
    err = rotation.invariance_error("enf_ponita", ponita, z, seed=1, n=2)
    mlp = registry.build_model("enf_mlp", z, {"hidden": 8}, 0)
    assert err < 1e-4 < rotation.invariance_error("enf_mlp", mlp, z, seed=1, n=2)
    assert rotation.invariance_error("resnet18", None, z) is None
    assert rotation.invariance_error("cnf_mlp", None, z) is None


# ----------------------------------------------------------------------------- missing inputs


def test_missing_meta_learning_results_name_the_file(tmp_path):
    path = tmp_path / "results" / "cpu" / "03_meta_learning.json"
    with pytest.raises(FileNotFoundError, match="03_meta_learning.json.*notebook 03"):
        study_clf.read_meta_learning(path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"psnr_db": 30.0}))
    with pytest.raises(ValueError, match=r"03_meta_learning\.json lacks"):
        study_clf.read_meta_learning(path)
    path.write_text(
        json.dumps({"latent_stores": {"enf": {"test": "x/enf_test.h5"}}, "decoders": {"enf": "d"}})
    )
    meta = study_clf.read_meta_learning(path)
    assert meta.latent_stores["enf"]["test"].is_absolute()
    assert meta.latent_stores["enf"]["test"].parts[-2:] == ("x", "enf_test.h5")


def test_load_inputs_checks_latent_stores(tmp_path):
    ds = tmp_path / "data.h5"
    with h5py.File(ds, "w") as f:
        f.create_dataset("test/labels", data=np.array([0, 1, 2, 0]))
    missing = tmp_path / "nowhere" / "enf_test.h5"
    with pytest.raises(FileNotFoundError, match=r"nowhere/enf_test\.h5"):
        study_clf.load_inputs("enf_ponita", "test", dataset_path=ds,
                          latent_stores={"enf": {"test": missing}})  # fmt: skip
    with pytest.raises(ValueError, match="no enf latent store"):
        study_clf.load_inputs("enf_mlp", "test", dataset_path=ds, latent_stores={})
    z = Latents(np.zeros((4, 2, 2)), np.zeros((4, 2)), np.zeros((4, 2, 3)), np.ones((4, 2)))
    store = tmp_path / "enf_test.h5"
    prov = dict(kind="enf", model_config={}, decoder_path="d", decoder_hash="abc")
    write_latent_store(store, latents=z, labels=[0, 1, 2, 0], psnr=np.zeros(4), **prov)
    x, y = study_clf.load_inputs("enf_mlp", "test", dataset_path=ds,
                             latent_stores={"enf": {"test": store}})  # fmt: skip
    assert isinstance(x, Latents) and x.contexts.shape == (4, 2, 3) and y.tolist() == [0, 1, 2, 0]
    write_latent_store(store, latents=z, labels=[0, 1, 0, 2], psnr=np.zeros(4), **prov)
    with pytest.raises(ValueError, match="does not match split 'test'"):
        study_clf.load_inputs("enf_mlp", "test", dataset_path=ds,
                          latent_stores={"enf": {"test": store}})  # fmt: skip
    with pytest.raises(ValueError, match="expected decoder hash"):
        study_clf.load_inputs("enf_mlp", "test", dataset_path=ds, expected_decoder_hash="zzz",
                          latent_stores={"enf": {"test": store}})  # fmt: skip
