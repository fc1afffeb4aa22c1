"""Shared pytest fixtures: seeded PRNG keys, NaN debugging, headless matplotlib."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_debug_nans", True)


@pytest.fixture
def key():
    """A fresh, fixed PRNG key per test."""
    return jax.random.PRNGKey(0)


@pytest.fixture
def keys():
    """An endless supply of independent PRNG keys (deterministic per test)."""

    def gen(seed: int = 0):
        k = jax.random.PRNGKey(seed)
        while True:
            k, sub = jax.random.split(k)
            yield sub

    return gen()
