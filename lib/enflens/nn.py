"""Small helpers shared by every NNX model of the project (fields and classifiers)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx


def count_params(model_or_params: Any) -> int:
    """Number of trainable scalars: the ``nnx.Param`` leaves of a module (frozen buffers such as
    fixed Fourier frequencies excluded), or every leaf of a parameter pytree.

    >>> count_params(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    8
    """
    tree = (
        nnx.state(model_or_params, nnx.Param)
        if isinstance(model_or_params, nnx.Module)
        else model_or_params
    )
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))
