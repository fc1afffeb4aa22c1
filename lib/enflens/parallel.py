"""Data parallelism on every device, and across processes, with ``jax.sharding``.

The three hot loops (Meta-SGD outer steps, latent encoding, classifier training) run one
jitted program over a 1-D device mesh with the axis ``"data"`` (:func:`data_mesh`): the batch
is split along its first axis over the devices (:func:`batch_sharding`, :func:`shard_batch`),
the parameters are replicated (:func:`replicated`, :func:`replicate`), and XLA inserts the
gradient all-reduce. The global batch is the one the profile names, whatever the device count;
it must be divisible by the number of devices of the mesh (:func:`check_batch` raises a
ValueError naming the batch size and the device count otherwise; padding a training batch would
change its gradient). By default the mesh holds all devices of all processes, so the same
profile runs on 1 CPU or on N GPUs unchanged.

Multi-process runs (one process per host or per GPU) use ``jax.distributed``
(:func:`initialize`): every process runs the same program and feeds only the rows of each
global batch that its own devices hold (:func:`local_rows`, :func:`shard_batch`); results that
are written to disk are gathered to every process (:func:`to_host`) and written by process 0
only (:func:`is_main_process`), then all processes wait (:func:`barrier`). Random draws inside
the jitted steps do not depend on the sharding (``jax_threefry_partitionable``, the default),
so a run on D devices computes what one device computes, up to the order of floating-point
sums in the batch reductions.

Environment variables read by :func:`initialize_from_env` (set by
``python -m enflens.study.pipeline run --num-processes/--process-id/--coordinator``):
:data:`ENV_COORDINATOR`, :data:`ENV_NUM_PROCESSES`, :data:`ENV_PROCESS_ID`; with only
:data:`ENV_DISTRIBUTED` set to ``auto``, ``jax.distributed`` detects the cluster itself (SLURM,
Open MPI, ...).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
#: Name of the data-parallel mesh axis.
AXIS = "data"
ENV_COORDINATOR = "ENFLENS_COORDINATOR"
ENV_NUM_PROCESSES = "ENFLENS_NUM_PROCESSES"
ENV_PROCESS_ID = "ENFLENS_PROCESS_ID"
ENV_DISTRIBUTED = "ENFLENS_DISTRIBUTED"


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Start ``jax.distributed`` (before any other JAX call of the process).

    Args:
        coordinator: ``host:port`` of process 0's coordinator service.
        num_processes: processes in the run; 1 (or None with no coordinator) starts nothing.
        process_id: this process's index in [0, num_processes).
        With all three None, ``jax.distributed`` detects them from the cluster (SLURM,
        Open MPI, Kubernetes, ...).

    Returns:
        True if ``jax.distributed`` was started (or already running), False for a
        single-process run.

    Raises:
        ValueError: ``process_id`` not in [0, num_processes), or a coordinator without both
            counts (naming the argument).

    On CPU the cross-process collectives use gloo (``jax_cpu_collectives_implementation``).
    """
    explicit = (coordinator, num_processes, process_id)
    if num_processes is not None and int(num_processes) == 1:
        return False
    if any(v is not None for v in explicit) and any(v is None for v in explicit):
        raise ValueError(
            "parallel.initialize: give coordinator, num_processes and process_id together "
            f"(got coordinator={coordinator!r}, num_processes={num_processes!r}, "
            f"process_id={process_id!r}), or none of them to detect the cluster"
        )
    if num_processes is not None and not 0 <= int(process_id) < int(num_processes):
        raise ValueError(
            f"parallel.initialize: process_id={process_id} is not in [0, {num_processes})"
        )
    if jax.distributed.is_initialized():
        return True
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if num_processes is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator, int(num_processes), int(process_id))
    return True


def initialize_from_env(environ: dict[str, str] | None = None) -> bool:
    """:func:`initialize` from the ``ENFLENS_*`` variables (see the module docstring).

    Nothing is started when neither :data:`ENV_NUM_PROCESSES` nor :data:`ENV_DISTRIBUTED` is
    set, or when the process count is 1.

    >>> initialize_from_env({})
    False
    >>> initialize_from_env({ENV_NUM_PROCESSES: "1"})
    False
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_NUM_PROCESSES):
        try:
            n = int(env[ENV_NUM_PROCESSES])
            if n == 1:
                return False
            pid = int(env.get(ENV_PROCESS_ID, ""))
        except ValueError as err:
            raise ValueError(
                f"parallel: {ENV_NUM_PROCESSES}={env.get(ENV_NUM_PROCESSES)!r} and "
                f"{ENV_PROCESS_ID}={env.get(ENV_PROCESS_ID)!r} must be integers"
            ) from err
        if not env.get(ENV_COORDINATOR):
            raise ValueError(f"parallel: {ENV_NUM_PROCESSES}={n} needs {ENV_COORDINATOR}=host:port")
        return initialize(env[ENV_COORDINATOR], n, pid)
    if env.get(ENV_DISTRIBUTED, "").lower() == "auto":
        return initialize()
    return False


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The 1-D mesh ``("data",)`` over ``devices`` (default: every device of every process,
    process by process, so each process's devices hold one contiguous block of a batch).

    >>> data_mesh(jax.devices()[:1]).axis_names
    ('data',)
    """
    devs = tuple(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("data_mesh: no devices given")
    return _mesh(tuple(sorted(devs, key=lambda d: (d.process_index, d.id))))


@functools.lru_cache(maxsize=8)
def _mesh(devices: tuple[jax.Device, ...]) -> Mesh:
    return Mesh(np.array(devices), (AXIS,))


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Sharding of arrays split along ``axis`` over the mesh (the batch axis)."""
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of arrays held whole by every device of the mesh (parameters, keys)."""
    return NamedSharding(mesh, PartitionSpec())


def num_devices(mesh: Mesh) -> int:
    """Devices along the data axis."""
    return int(mesh.shape[AXIS])


def check_batch(batch_size: int, mesh: Mesh, what: str) -> int:
    """Check that a global batch splits evenly over the mesh; returns it.

    Raises:
        ValueError: naming ``what`` (e.g. ``"MetaConfig.batch_size"``), the batch size and the
            device count.

    >>> check_batch(8, data_mesh(jax.devices()[:1]), "demo")
    8
    """
    d = num_devices(mesh)
    if batch_size % d:
        raise ValueError(
            f"{what}={batch_size} is not divisible by the {d} devices of the data mesh; "
            f"use a multiple of {d} (the global batch is split evenly over the devices)"
        )
    return int(batch_size)


def local_slice(batch_size: int, mesh: Mesh) -> slice:
    """The rows [start, stop) of a global batch of ``batch_size`` that this process's devices
    hold under :func:`batch_sharding` (all rows in a single-process run).

    >>> local_slice(8, data_mesh(jax.devices()[:1]))
    slice(0, 8, None)
    """
    check_batch(batch_size, mesh, "batch size")
    index_map = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
    spans = sorted((s[0].start or 0, batch_size if s[0].stop is None else s[0].stop)
                   for s in index_map.values())  # fmt: skip
    for (_, stop), (start, _) in zip(spans, spans[1:], strict=False):
        if start != stop:
            raise ValueError(f"local_slice: this process's devices hold rows {spans}, not a block")
    return slice(spans[0][0], spans[-1][1])


def local_rows(rows: np.ndarray, mesh: Mesh) -> np.ndarray:
    """The entries of a global batch's row indices ``rows`` (B,) that this process feeds.

    >>> local_rows(np.arange(4), data_mesh(jax.devices()[:1])).tolist()
    [0, 1, 2, 3]
    """
    rows = np.asarray(rows)
    return rows[local_slice(len(rows), mesh)]


def shard_batch(local: PyTree, mesh: Mesh, batch_size: int) -> PyTree:
    """Global arrays (``batch_size`` rows, split over the mesh) from this process's rows.

    Args:
        local: pytree of host arrays with this process's rows of the batch
            (:func:`local_rows`; all ``batch_size`` rows in a single-process run).
        mesh: the data mesh; batch_size: the global batch.

    Returns:
        The same pytree of ``jax.Array`` of leading dimension ``batch_size``, sharded along it.
    """
    check_batch(batch_size, mesh, "batch size")
    sharding = batch_sharding(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, (batch_size, *x.shape[1:]))

    return jax.tree.map(put, local)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Every array leaf of ``tree`` placed whole on every device of the mesh.

    Leaves that are already global arrays (e.g. the outputs of a sharded step in a
    multi-process run) keep their values; host arrays must be equal on every process.
    """
    sharding = replicated(mesh)

    def put(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.jit(lambda a: a, out_shardings=sharding)(x)
        if isinstance(x, jax.Array) and jax.process_count() == 1:
            return jax.device_put(x, sharding)  # also typed PRNG keys
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx, x=x: x[idx])

    return jax.tree.map(put, tree)


def to_host(tree: PyTree) -> PyTree:
    """Every leaf as a numpy array holding its global value, on every process (gathers the
    pieces held by other processes; a plain ``np.asarray`` in a single-process run).

    >>> to_host({"a": jax.numpy.ones(2)})["a"].tolist()
    [1.0, 1.0]
    """

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(get, tree)


def broadcast_from_main(tree: PyTree) -> PyTree:
    """Process 0's values of ``tree`` on every process (``tree`` itself in a single-process run).

    Every process must call it with a tree of the same structure, shapes and dtypes.
    """
    if jax.process_count() == 1:
        return tree
    return multihost_utils.broadcast_one_to_all(to_host(tree))


def agree(flag: bool) -> bool:
    """Process 0's value of ``flag`` on every process (e.g. whether a cached file exists, so
    that all processes take the same branch).

    >>> agree(True)
    True
    """
    return bool(broadcast_from_main(np.asarray(bool(flag))))


def process_index() -> int:
    """This process's index (0 in a single-process run)."""
    return jax.process_index()


def process_count() -> int:
    """Processes in the run (1 without ``jax.distributed``)."""
    return jax.process_count()


def is_main_process() -> bool:
    """True on process 0, the one that writes files.

    >>> is_main_process()
    True
    """
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (nothing in a single-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
