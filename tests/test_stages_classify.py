"""Classifier stages of ``enflens.study.stages``, in process on tiny inputs: a second call restores
instead of training, a changed step count retrains, the cache key covers everything that
determines a run, the rotation curves (refits with a tiny trained decoder: angle 0 reproduces the
stored encoding) and the data-efficiency loop reusing the 100 % runs."""

from __future__ import annotations

import numpy as np
import pytest

from enflens.classify import train
from enflens.evaluate import metrics, rotation
from enflens.fields import adapters
from enflens.fields.enf import ENFConfig
from enflens.grid import make_grid
from enflens.metalearn import encode, outer
from enflens.metalearn.latent_store import read_latent_store
from enflens.study import classifiers as study_clf
from enflens.study import stages

SPLIT_SIZES = {"train": 48, "val": 24, "test": 24}
CFG = {"steps": 6, "eval_every": 3, "batch_size": 16, "learning_rate": 3e-3}


def _vectors() -> stages.ClassifierInputs:
    """CNF-like (n, 8) inputs: three Gaussian clusters, a learnable problem."""
    centres = np.random.default_rng(99).normal(size=(3, 8)) * 1.5
    splits = {}
    for i, (split, n) in enumerate(SPLIT_SIZES.items()):
        rng = np.random.default_rng(i)
        y = np.arange(n) % 3
        splits[split] = ((centres[y] + rng.normal(size=(n, 8))).astype(np.float32), y)
    return stages.ClassifierInputs({"cnf": splits}, {"cnf": {"dataset": "blobs.h5"}})


@pytest.fixture
def counting_fit(monkeypatch):
    calls = []
    real_fit = train.fit

    def fit(*a, **k):
        calls.append(k.get("cfg", a[3] if len(a) > 3 else None))
        return real_fit(*a, **k)

    monkeypatch.setattr(train, "fit", fit)
    return calls


def test_classifier_restores_from_the_cache_and_retrains_on_a_new_step_count(
    tmp_path, counting_fit
):
    inputs = _vectors()
    kw = dict(model_cfg={"hidden": 16}, seed=0, cache_dir=tmp_path)
    first = stages.classifier("cnf_mlp", inputs, CFG, **kw)
    assert not first.cached and len(counting_fit) == 1
    assert first.history["steps"] == 6 and first.key["train_cfg"]["steps"] == 6
    assert first.key["stage"] == "classifier" and first.path.parent == tmp_path
    # the test metrics are those of the returned model on the test split
    x_te, y_te = inputs.split("cnf_mlp", "test")
    assert first.test["accuracy"] == metrics.accuracy(y_te, train.predict(first.model, x_te))
    entry = first.entry()
    assert entry["steps"] == 6 and entry["n_params"] > 0 and not entry["restored_from_cache"]

    second = stages.classifier("cnf_mlp", inputs, CFG, **kw)
    assert second.cached and len(counting_fit) == 1  # restored, not trained
    assert second.path == first.path and second.test == first.test
    assert second.history["val_acc"] == first.history["val_acc"]
    np.testing.assert_array_equal(
        train.predict(first.model, x_te), train.predict(second.model, x_te)
    )
    assert second.entry()["restored_from_cache"]

    third = stages.classifier("cnf_mlp", inputs, {**CFG, "steps": 9}, **kw)
    assert not third.cached and len(counting_fit) == 2 and third.path != first.path
    assert third.history["steps"] == 9
    # an interrupted run (no params.json marker) is not trusted
    (first.path / "params.json").unlink()
    assert not stages.classifier("cnf_mlp", inputs, CFG, **kw).cached
    assert len(counting_fit) == 3


def test_classifier_cache_key_covers_what_determines_the_run(tmp_path):
    inputs = _vectors()

    def run_dir(inp=inputs, cfg=CFG, **kw):
        kw = {"model_cfg": {"hidden": 16}, "augment_cfg": None, "seed": 0, "fraction": 1.0,
              **kw}  # fmt: skip
        return stages._classifier_run("cnf_mlp", inp, cfg, cache_dir=tmp_path, **kw)[2]

    base = run_dir()
    x_tr, y_tr = inputs.splits["cnf"]["train"]
    changed_x = x_tr.copy()
    changed_x[0, 0] += 1.0  # one changed number in the training data
    other_data = stages.ClassifierInputs(
        {"cnf": {**inputs.splits["cnf"], "train": (changed_x, y_tr)}}, inputs.tags
    )
    other_tag = stages.ClassifierInputs(inputs.splits, {"cnf": {"dataset": "other.h5"}})
    variants = [
        run_dir(inp=other_data), run_dir(inp=other_tag), run_dir(cfg={**CFG, "steps": 7}),
        run_dir(cfg={**CFG, "eval_every": 2}), run_dir(cfg={**CFG, "learning_rate": 1e-2}),
        run_dir(model_cfg={"hidden": 17}), run_dir(seed=1), run_dir(fraction=0.5),
        run_dir(augment_cfg={"noise": 0.2}),
    ]  # fmt: skip
    assert len({base, *variants}) == len(variants) + 1
    # ... but not the progress bar, and defaults spelled out give the same key
    assert run_dir(cfg={**CFG, "progress": True}) == base
    assert run_dir(model_cfg={"hidden": 16, "layers": 3}) == base
    with pytest.raises(ValueError, match="train_cfg: unknown keys"):
        stages.classifier("cnf_mlp", inputs, {"epochs": 3}, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="train_seconds"):
        stages.classifier("cnf_mlp", inputs, {**CFG, "train_seconds": 60}, cache_dir=tmp_path)


def test_data_efficiency_reuses_the_full_runs_and_caches_its_table(
    tmp_path, counting_fit, monkeypatch
):
    inputs = _vectors()
    model_cfgs = {"cnf_mlp": {"hidden": 16}}
    full = stages.classifier("cnf_mlp", inputs, CFG, model_cfg=model_cfgs["cnf_mlp"],
                             cache_dir=tmp_path)  # fmt: skip
    assert len(counting_fit) == 1
    kw = dict(steps={"cnf_mlp": 4}, evaluations=2, model_cfgs=model_cfgs, cache_dir=tmp_path)
    de = stages.data_efficiency(["cnf_mlp"], inputs, {"cnf_mlp": CFG}, [0.25, 1.0], **kw)
    assert not de.cached and len(counting_fit) == 2  # only the 25 % run trained
    small, whole = de.points["cnf_mlp"]
    assert (small["fraction"], small["n_train"], small["steps"]) == (0.25, 12, 4)
    assert not small["restored_from_cache"]
    assert whole["restored_from_cache"] and whole["n_train"] == 48 and whole["steps"] == 6
    assert whole["accuracy"] == full.test["accuracy"]

    def no_classifier(*a, **k):
        raise AssertionError("the cached table must not touch a classifier")

    real_classifier = stages.classifier
    monkeypatch.setattr(stages, "classifier", no_classifier)
    again = stages.data_efficiency(["cnf_mlp"], inputs, {"cnf_mlp": CFG}, [0.25, 1.0], **kw)
    assert again.cached and again.path == de.path
    assert [p["accuracy"] for p in again.points["cnf_mlp"]] == [small["accuracy"],
                                                                 whole["accuracy"]]  # fmt: skip
    assert all(p["restored_from_cache"] for p in again.points["cnf_mlp"])
    # a new step budget is a new table
    monkeypatch.setattr(stages, "classifier", real_classifier)
    other = stages.data_efficiency(["cnf_mlp"], inputs, {"cnf_mlp": CFG}, [0.25, 1.0],
                                   **{**kw, "steps": {"cnf_mlp": 5}})  # fmt: skip
    assert not other.cached and other.path != de.path and other.points["cnf_mlp"][0]["steps"] == 5
    assert other.points["cnf_mlp"][1]["restored_from_cache"] and len(counting_fit) == 3


# ----------------------------------------------------------------------------- rotation curves

SIZE = 16


def _blob_images(n: int, seed: int) -> np.ndarray:
    """(n, SIZE, SIZE) smooth images in [0, 1]: two Gaussian blobs each."""
    rng = np.random.default_rng(seed)
    g = np.asarray(make_grid(SIZE)).reshape(SIZE, SIZE, 2)
    out = np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        for _ in range(2):
            c = rng.uniform(-0.5, 0.5, 2)
            out[i] += np.exp(-np.sum((g - c) ** 2, -1) / (2 * rng.uniform(0.1, 0.3) ** 2))
        out[i] /= out[i].max()
    return out


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """A tiny ENF meta-trained for a few steps, and every split encoded into a latent store."""
    tmp = tmp_path_factory.mktemp("rot")
    cfg = ENFConfig(num_latents=9, latent_dim=4, hidden=16, num_heads=2, k_nearest=4, num_rff=8)
    adapter = adapters.enf_adapter(cfg, lr_contexts=20.0)
    images = {s: _blob_images(n, seed=i) for i, (s, n) in enumerate(SPLIT_SIZES.items())}
    meta = outer.MetaConfig(
        inner_steps=2, inner_pixels=64, outer_pixels=64, batch_size=8, num_steps=3,
        warmup_steps=1, eval_every=0, checkpoint_every=0, first_order=True,
    )  # fmt: skip
    run = outer.meta_train(adapter, images["train"], meta, progress=False)
    dec = tmp / "enf_decoder"
    adapters.save_trained(dec, adapter, run.state.params, (SIZE, SIZE, 1))
    _, params, dmeta = adapters.load_trained(dec)
    splits = {"enf": {}, "image": {}}
    for split, imgs in images.items():
        y = np.arange(len(imgs)) % 3
        path = encode.encode_dataset(
            adapter, params, imgs, y, tmp / f"enf_{split}.h5", decoder_path=dec,
            decoder_hash=dmeta["hash"], steps=2, pixels=64, batch_size=8, seed=3,
            progress=False, extra_attrs={"batch_size": 8},
        )  # fmt: skip
        splits["enf"][split] = (read_latent_store(path).latents, y)
        splits["image"][split] = (imgs, y)
    enc = study_clf.encoding_settings(tmp / "enf_test.h5")
    assert enc == {"steps": 2, "pixels": 64, "sampling": "stratified", "seed": 3, "batch_size": 8}
    inputs = stages.ClassifierInputs(splits, {"enf": {}, "image": {}}, {"enf": dec}, {"enf": enc})
    return inputs, tmp, read_latent_store(tmp / "enf_test.h5")


def test_refit_at_angle_zero_reproduces_the_stored_encoding(encoded):
    inputs, _, store = encoded
    images = inputs.splits["image"]["test"][0]
    angles = [0.0, 90.0, 200.0]
    refits, psnr = rotation.refit_rotated(inputs.decoders["enf"], images, angles,
                                          **inputs.encodings["enf"])  # fmt: skip
    n = len(images)
    assert len(refits) == 3 and psnr.shape == (3, n)
    assert refits[1].positions.shape == store.latents.positions.shape == (n, 9, 2)
    # same decoder, settings, batches and keys: angle 0 is the stored encoding
    np.testing.assert_allclose(psnr[0], store.psnr, atol=1e-3)
    np.testing.assert_allclose(refits[0].contexts, store.latents.contexts, atol=1e-4)
    assert np.abs(refits[1].positions - store.latents.positions).max() > 1e-2  # rotated: not


def test_rotation_curves_per_model_and_their_cache(encoded, monkeypatch):
    inputs, tmp, store = encoded
    cfg = {"steps": 4, "eval_every": 2, "batch_size": 16}
    runs = {
        "enf_mlp": stages.classifier("enf_mlp", inputs, cfg, model_cfg={"hidden": 16},
                                     cache_dir=tmp / "clf"),
        "c8_gcnn": stages.classifier("c8_gcnn", inputs, cfg, model_cfg={"channels": [4]},
                                     cache_dir=tmp / "clf"),
    }  # fmt: skip
    kw = dict(n_angles=3, rot_images=24, refit_images=24, invariance_images=6,
              cache_dir=tmp / "rot")  # fmt: skip
    rot = stages.rotation_curves(runs, inputs, **kw)
    assert not rot.cached and rot.angles_deg[0] == 0.0 and len(rot.angles_deg) == 3
    assert (rot.n_images, rot.refit_images, rot.invariance_images) == (24, 24, 6)
    y_te = store.labels
    stored_acc = metrics.accuracy(y_te, train.predict(runs["enf_mlp"].model, store.latents))
    enf = rot.curves["enf_mlp"]
    assert len(enf["accuracy"]) == len(enf["latent_action_accuracy"]) == 3
    # angle 0: the refit and the identity action both give the stored latents' accuracy
    assert enf["accuracy"][0] == stored_acc == enf["latent_action_accuracy"][0]
    assert enf["accuracy"][0] == runs["enf_mlp"].test["accuracy"]
    assert enf["rotated_accuracy"] == pytest.approx(np.mean(enf["accuracy"][1:]))
    assert enf["invariance_error"] > 1e-4  # the MLP is not invariant
    cnn = rot.curves["c8_gcnn"]
    assert cnn["latent_action_accuracy"] is None and cnn["invariance_error"] is None
    assert len(cnn["accuracy"]) == 3 and cnn["n_images"] == 24
    assert len(rot.refit_psnr_db["enf"]) == 3
    assert rot.refit_psnr_db["enf"][0] == pytest.approx(float(store.psnr.mean()), abs=1e-3)

    def no_refit(*a, **k):
        raise AssertionError("a cached rotation stage must not refit")

    monkeypatch.setattr(rotation, "refit_rotated", no_refit)
    again = stages.rotation_curves(runs, inputs, **kw)
    assert again.cached and again.curves == rot.curves and again.path == rot.path
    # a different number of angles is a different stage
    with pytest.raises(AssertionError, match="must not refit"):
        stages.rotation_curves(runs, inputs, **{**kw, "n_angles": 2})
