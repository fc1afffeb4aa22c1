"""Latent-cloud classifiers: exact invariance to rotations about the centre (SE(2) without the
radial node features), with the MLP as negative control; context standardisation; use of
orientations, permutation invariance, factory errors, parameter counts, tiny-batch overfit."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from enflens.classify import latent_models as C
from enflens.classify.train import fit, predict
from enflens.evaluate.metrics import invariance_error
from enflens.geometry import Latents
from enflens.nn import count_params

N, D = 16, 8  # small clouds keep the tests fast
SMALL = {
    "enf_mlp": {"hidden": 32},
    "enf_ponita": {"hidden": 32, "basis_dim": 32, "layers": 2},
    "enf_transformer": {"hidden": 32, "basis_dim": 16, "layers": 2},
}


def _rngs(seed: int = 0) -> nnx.Rngs:
    """RBG keys: same statistics for initialisation, much faster to compile on CPU."""
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _latents(rng: np.random.Generator, b: int = 8, n: int = N, d: int = D) -> Latents:
    return Latents(
        positions=rng.uniform(-0.8, 0.8, (b, n, 2)).astype(np.float32),
        orientations=rng.uniform(0, 2 * np.pi, (b, n)).astype(np.float32),
        contexts=rng.normal(size=(b, n, d)).astype(np.float32),
        windows=rng.uniform(0.1, 0.4, (b, n)).astype(np.float32),
    )


@pytest.fixture(scope="module")
def models():
    return {
        name: C.make_classifier(name, context_dim=D, num_latents=N, rngs=_rngs(), **cfg)
        for name, cfg in SMALL.items()
    }


@pytest.mark.parametrize("name", ["enf_ponita", "enf_transformer"])
def test_invariant_to_random_rotations_about_the_centre(models, name):
    z = _latents(np.random.default_rng(0))
    logits = predict(models[name], z)
    # non-trivial output: the logits differ between examples
    assert np.ptp(logits, axis=0).max() > 1e-2 * np.abs(logits).max()
    err = invariance_error(models[name], z, jax.random.key(1), n=4, max_translation=0.0)
    print(f"{name}: rotation-about-the-centre invariance error {err:.1e}")
    assert err < 1e-5


@pytest.mark.parametrize("name", ["enf_ponita", "enf_transformer"])
def test_radial_node_features_break_translations_only(models, name):
    """The default models read the radius from the lens centre: invariant to rotations about
    it (above), not to translations (the group they claim is SO(2), not SE(2)); without the
    radial features they are SE(2) invariant."""
    z = _latents(np.random.default_rng(0))
    err = invariance_error(models[name], z, jax.random.key(1), n=4, max_translation=0.5)
    assert err > 1e-3, err
    m = C.make_classifier(name, context_dim=D, num_latents=N, rngs=_rngs(), node_geometry=False,
                          **SMALL[name])  # fmt: skip
    err = invariance_error(m, z, jax.random.key(1), n=4, max_translation=0.5)
    print(f"{name} (node_geometry=False): SE(2) invariance error {err:.1e}")
    assert err < 1e-5


def test_mlp_is_not_invariant(models):
    z = _latents(np.random.default_rng(0))
    for t in (0.0, 0.5):
        err = invariance_error(models["enf_mlp"], z, jax.random.key(1), n=4, max_translation=t)
        print(f"enf_mlp (negative control): invariance error {err:.2f} (translation {t})")
        assert err > 0.05


@pytest.mark.parametrize("name", ["enf_ponita", "enf_transformer"])
def test_context_standardisation_is_stored_and_undoes_affine_scaling(name):
    """The model standardises contexts with statistics it stores: contexts scaled and shifted
    per channel, with the statistics recomputed, give the same logits; the statistics are part
    of the model state (so of its checkpoint) and are not trained."""
    rng = np.random.default_rng(5)
    z = _latents(rng)
    scale = rng.uniform(0.01, 0.2, D).astype(np.float32)
    shift = rng.normal(size=D).astype(np.float32)
    z2 = Latents(z.positions, z.orientations, z.contexts * scale + shift, z.windows)
    m1 = C.make_classifier(name, context_dim=D, num_latents=N, rngs=_rngs(), **SMALL[name])
    m2 = C.make_classifier(name, context_dim=D, num_latents=N, rngs=_rngs(), **SMALL[name])
    m1.set_context_statistics(z.contexts)
    m2.set_context_statistics(z2.contexts)
    np.testing.assert_allclose(predict(m2, z2), predict(m1, z), atol=2e-4)
    # negative control: without the matching statistics the output changes
    assert np.abs(predict(m1, z2) - predict(m1, z)).max() > 1e-2
    np.testing.assert_allclose(
        nnx.state(m2, C.Statistic)["context_std"][...], scale * z.contexts.std((0, 1)), rtol=1e-3
    )
    assert "context_mean" not in nnx.state(m2, nnx.Param)
    with pytest.raises(ValueError, match="channels"):
        m1.set_context_statistics(np.zeros((2, N, D + 1), np.float32))


@pytest.mark.parametrize("name", ["enf_ponita", "enf_transformer"])
def test_uses_orientations_and_is_permutation_invariant(models, name):
    rng = np.random.default_rng(2)
    z = _latents(rng)
    base = predict(models[name], z)
    # turning each latent by its own angle is not a group action: the output must change
    turned = Latents(z.positions, z.orientations + rng.uniform(0, 2 * np.pi, z.orientations.shape),
                     z.contexts, z.windows)  # fmt: skip
    assert np.abs(predict(models[name], turned) - base).max() > 1e-3 * np.abs(base).max()
    perm = rng.permutation(N)
    shuffled = Latents(z.positions[:, perm], z.orientations[:, perm], z.contexts[:, perm],
                       z.windows[:, perm])  # fmt: skip
    np.testing.assert_allclose(predict(models[name], shuffled), base, atol=1e-5)


@pytest.mark.parametrize("name", ["enf_ponita", "enf_transformer"])
@pytest.mark.parametrize("slot_cfg", [{"slot_embedding": True}, {"pool": "slots"}])
def test_slot_options_keep_rotation_invariance_and_read_the_latent_order(name, slot_cfg):
    """With slot embeddings (or the slot-order readout) latent i is read as template slot i:
    still invariant to random continuous rotations about the centre (the action keeps each
    latent's index), no longer to permutations of the latents (the control the
    permutation-invariant default passes above)."""
    m = C.make_classifier(name, context_dim=D, num_latents=N, rngs=_rngs(), **slot_cfg,
                          **SMALL[name])  # fmt: skip
    if m.slot is not None:  # the small initial slots (std 0.02) would hide the effect
        m.slot[...] = jax.random.normal(jax.random.key(7), m.slot[...].shape)
    rng = np.random.default_rng(6)
    z = _latents(rng)
    err = invariance_error(m, z, jax.random.key(1), n=4, max_translation=0.0)
    print(f"{name} (slot_embedding): rotation-about-the-centre invariance error {err:.1e}")
    assert err < 1e-5
    base = predict(m, z)
    perm = rng.permutation(N)
    shuffled = Latents(z.positions[:, perm], z.orientations[:, perm], z.contexts[:, perm],
                       z.windows[:, perm])  # fmt: skip
    assert np.abs(predict(m, shuffled) - base).max() > 1e-3 * np.abs(base).max()


def test_cnf_mlp_and_factory_errors():
    m = C.make_classifier("cnf_mlp", context_dim=0, num_latents=0, cnf_dim=12, rngs=_rngs())
    assert predict(m, np.zeros((5, 12), np.float32)).shape == (5, 3)
    with pytest.raises(ValueError, match="cnf_dim"):
        C.make_classifier("cnf_mlp", context_dim=0, num_latents=0, rngs=_rngs())
    with pytest.raises(ValueError, match="unknown classifier"):
        C.make_classifier("enf_gnn", context_dim=D, num_latents=N, rngs=_rngs())
    with pytest.raises(ValueError, match="unknown keys"):
        C.make_classifier("enf_ponita", context_dim=D, num_latents=N, depth=3, rngs=_rngs())
    with pytest.raises(ValueError, match="must divide"):
        C.make_classifier("enf_transformer", context_dim=D, num_latents=N, heads=5, rngs=_rngs())
    with pytest.raises(ValueError, match="pool='max'"):
        C.make_classifier("enf_ponita", context_dim=D, num_latents=N, pool="max", rngs=_rngs())
    with pytest.raises(ValueError, match="expected"):
        m(np.zeros((5, 11), np.float32))


def test_wrong_latent_shapes_raise(models):
    z = _latents(np.random.default_rng(0), n=N + 1)
    with pytest.raises(ValueError, match="positions must be"):
        models["enf_ponita"](z)
    z = _latents(np.random.default_rng(0), d=D + 1)
    with pytest.raises(ValueError, match="contexts must be"):
        models["enf_mlp"](z)


def test_default_parameter_counts():
    counts = {
        name: count_params(
            nnx.eval_shape(
                lambda name=name: C.make_classifier(
                    name, context_dim=32, num_latents=25, cnf_dim=256, rngs=nnx.Rngs(0)
                )
            )
        )
        for name in C.CLASSIFIER_CONFIGS
    }
    print("default parameter counts (D=32, N=25, D_cnf=256):", counts)
    assert counts == {
        "enf_mlp": 135_939,
        "enf_ponita": 125_895,
        "enf_transformer": 112_339,
        "cnf_mlp": 50_307,
    }


def test_rff_basis_variant_is_invariant():
    m = C.make_classifier(
        "enf_ponita", context_dim=D, num_latents=N, rngs=_rngs(), hidden=16, basis_dim=16,
        layers=1, degree=2, rff_dim=8,
    )  # fmt: skip
    z = _latents(np.random.default_rng(3), b=4)
    assert invariance_error(m, z, jax.random.key(2), n=2, max_translation=0.0) < 1e-5


@pytest.mark.parametrize("name", ["enf_mlp", "enf_ponita", "enf_transformer", "cnf_mlp"])
def test_overfits_tiny_batch(name):
    rng = np.random.default_rng(4)
    y = np.arange(12) % 3
    if name == "cnf_mlp":
        x = rng.normal(size=(12, 16)).astype(np.float32)
        m = C.make_classifier(name, context_dim=0, num_latents=0, cnf_dim=16, rngs=_rngs())
    else:
        x = _latents(rng, b=12)
        m = C.make_classifier(name, context_dim=D, num_latents=N, rngs=_rngs(), **SMALL[name])
    hist = fit(
        m, (x, y), (x, y), steps=40, eval_every=1, batch_size=12, learning_rate=3e-3,
        weight_decay=0.0, warmup_fraction=0.0, patience=None, progress=False,
    )  # fmt: skip
    assert hist["best_val_acc"] == 1.0
    assert (predict(m, x).argmax(-1) == y).all()


def _latent_bench():
    import importlib.util

    from enflens.io import repo_path

    spec = importlib.util.spec_from_file_location(
        "latent_classifiers", repo_path("bench", "latent_classifiers.py")
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_seeds_parse_and_bad_lists_are_named():
    bench = _latent_bench()
    assert bench.parse_seeds("0,1,2") == [0, 1, 2]
    assert bench.parse_seeds("3") == [3]
    for bad in ("", "1,-2", "1,x", "1,1", "²"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            bench.parse_seeds(bad)


def test_bench_variants_are_valid_invariant_models():
    """bench/latent_classifiers.py's variants build, and each stays invariant to random
    continuous rotations about the centre (the slot variants included)."""
    bench = _latent_bench()
    z = _latents(np.random.default_rng(8), b=4)
    for label, (name, cfg) in bench.VARIANTS.items():
        small = {**cfg, "hidden": 16, "basis_dim": 8, "layers": min(cfg.get("layers", 1), 1),
                 "pool_heads": 2}  # fmt: skip
        if name == "enf_transformer":
            small["heads"] = 2
        m = C.make_classifier(name, context_dim=D, num_latents=N, rngs=_rngs(), **small)
        err = invariance_error(m, z, jax.random.key(3), n=2, max_translation=0.0)
        assert err < 1e-5, (label, err)


@pytest.mark.parametrize("basis_dim", [4, 12])  # K < N: factored order; K >= N: kernels formed
def test_convnext_message_equals_the_explicit_kernel_sum(basis_dim):
    b, n, c = 3, 8, 6
    blk = C.ConvNeXtBlock(c, basis_dim, 2, 1.0, rngs=_rngs())
    h = jax.random.normal(jax.random.key(1), (b, n, c))
    basis = jax.random.normal(jax.random.key(2), (b, n, n, basis_dim))

    def reference(block):  # sum_j k_ijc h_jc with the kernels k = basis @ W written out
        k = np.einsum("bijk,kc->bijc", np.asarray(basis, np.float64),
                      np.asarray(block.kernel.kernel[...], np.float64))  # fmt: skip
        msg = np.einsum("bijc,bjc->bic", k, np.asarray(h, np.float64)) / n
        msg = jnp.asarray(msg, jnp.float32) + block.conv_bias[...]
        return h + block.gamma[...] * block.fc2(nnx.gelu(block.fc1(block.norm(msg))))

    np.testing.assert_allclose(blk(h, basis), reference(blk), atol=2e-5, rtol=1e-5)
    other = C.ConvNeXtBlock(c, basis_dim, 2, 1.0, rngs=_rngs())
    # control: other kernels give another output (a perturbation, not a rescaling, which the
    # LayerNorm after the message would undo)
    w = other.kernel.kernel[...]
    other.kernel.kernel[...] = w + 0.5 * jax.random.normal(jax.random.key(4), w.shape)
    assert float(jnp.max(jnp.abs(other(h, basis) - reference(blk)))) > 1e-3


def test_blockless_ponita_has_no_pair_basis():
    """layers=0 (the per-latent invariants read in slot order): the pair basis is neither built
    nor evaluated, so its parameters are gone, and the model stays invariant to rotations about
    the centre while it still reads the slot order (a permutation changes its output)."""
    cfg = {"hidden": 16, "basis_dim": 8, "layers": 0, "slot_embedding": True, "pool": "slots"}
    m = C.make_classifier("enf_ponita", context_dim=D, num_latents=N, rngs=_rngs(), **cfg)
    with_blocks = C.make_classifier("enf_ponita", context_dim=D, num_latents=N, rngs=_rngs(),
                                    **{**cfg, "layers": 1})  # fmt: skip
    assert m.basis is None and with_blocks.basis is not None
    basis_params = count_params(nnx.state(with_blocks.basis, nnx.Param))
    block_params = count_params(nnx.state(with_blocks.blocks, nnx.Param))
    assert count_params(nnx.state(m, nnx.Param)) == (
        count_params(nnx.state(with_blocks, nnx.Param)) - basis_params - block_params
    )
    z = _latents(np.random.default_rng(9), b=4)
    assert invariance_error(m, z, jax.random.key(4), n=2, max_translation=0.0) < 1e-5
    perm = np.random.default_rng(1).permutation(N)
    zp = jax.tree.map(lambda a: a[:, perm], z)
    assert np.abs(predict(m, zp) - predict(m, z)).max() > 1e-4
