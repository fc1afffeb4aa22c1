"""Shared pytest fixtures (seeded PRNG keys, NaN debugging, headless matplotlib), and the smoke
runs of ``tests/test_reproduce_smoke.py``: started in the background as soon as a test that needs
them is collected, so they go on alongside the unit tests, whose tests are moved to the end."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import pytest  # noqa: E402
import smoke_runs  # noqa: E402

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


SMOKE_MODULE = "test_reproduce_smoke.py"


def pytest_collection_modifyitems(config, items):
    """The smoke tests last (stable order otherwise): they wait for the background runs."""
    smoke = [i for i in items if i.path.name == SMOKE_MODULE]
    items[:] = [i for i in items if i.path.name != SMOKE_MODULE] + smoke


def pytest_collection_finish(session):
    """Start the smoke runs if a selected test needs them (not for ``--collect-only``)."""
    needs_runs = any(
        i.path.name == SMOKE_MODULE and "runs" in getattr(i, "fixturenames", ())
        for i in session.items
    )
    if needs_runs and not session.config.option.collectonly:
        smoke_runs.start()


def pytest_sessionfinish(session, exitstatus):
    """Stop runs left going (an interrupted or failed session); keep their files on failure."""
    smoke_runs.stop(remove=exitstatus == 0)
