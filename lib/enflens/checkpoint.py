"""Orbax checkpoints of meta-learning runs and of trained decoders.

A pytree (the :class:`enflens.metalearn.outer.MetaState`: decoder params, frozen buffers, learned
inner rates and latent init, optax state, step, PRNG key) is stored as a nested dict of arrays whose
keys are the pytree path (``params/decoder/weights/0/value``...), so a checkpoint is readable
without the code and is restored into a template of the same structure. Beside the tree, a
mirror tree ``__sha256__`` holds each entry's sha256 (:func:`enflens.integrity.array_sha256`, 32
uint8), checked on every restore. A missing, mis-shaped or corrupted entry, an unreadable
checkpoint or a broken ``meta.json`` raises :class:`enflens.integrity.IntegrityError` (a
ValueError) naming the checkpoint and the entry. Checkpoints saved before the digests existed
restore with an :class:`enflens.integrity.IntegrityWarning`.

- :class:`CheckpointManager`: periodic run checkpoints (``<dir>/<step>/``), keep the last few,
  resume from the latest.
- :func:`save_decoder` / :func:`load_decoder`: the final trained model (one orbax directory plus a
  ``meta.json`` with model kind, config, image shape and a content hash) that latent stores refer
  to; :func:`tree_hash` is that hash.

Orbax writes into a temporary directory and renames it on success, so checkpoints are atomic.
In a multi-process run (:mod:`enflens.parallel`) every checkpoint is written by process 0 alone
from host copies of the arrays, and read by each process on its own: orbax is told that only
this process takes part (:func:`solo_options`), so no process waits for another.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from enflens.integrity import IntegrityError, array_sha256, read_json_file, warn
from enflens.io import write_json

PyTree = Any
#: Key of the digest mirror tree inside a saved nested dict.
DIGESTS = "__sha256__"


def _key_name(k: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def tree_to_nested(tree: PyTree) -> dict:
    """Pytree -> nested dict {path element: ... : numpy array} (path from the pytree keys)."""
    out: dict = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [_key_name(k) for k in path] or ["value"]
        node = out
        for name in names[:-1]:
            node = node.setdefault(name, {})
        if names[-1] in node:
            raise ValueError(f"tree_to_nested: duplicate path {'/'.join(names)}")
        node[names[-1]] = _host(leaf)
    return out


def _host(leaf: Any) -> np.ndarray:
    """A leaf as numpy; a replicated global array of a multi-process run from this process's
    copy (no collective, so process 0 alone can write it)."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        if not leaf.is_fully_replicated:
            raise ValueError(
                "checkpoint: an array split over several processes cannot be written by one; "
                "gather it first (enflens.parallel.to_host)"
            )
        return np.asarray(leaf.addressable_data(0))
    return np.asarray(leaf)


def nested_to_tree(nested: dict, template: PyTree, where: str | Path = "checkpoint") -> PyTree:
    """Inverse of :func:`tree_to_nested` into the structure of ``template`` (shapes checked).

    Raises:
        IntegrityError: an entry is missing or has another shape (``where`` names the
            checkpoint in the message).
    """
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        names = [_key_name(k) for k in path] or ["value"]
        node = nested
        for name in names:
            if not isinstance(node, dict) or name not in node:
                raise IntegrityError(
                    where, "no such entry (model/optimiser differ?)", "/".join(names)
                )
            node = node[name]
        arr = np.asarray(node)
        if arr.shape != np.shape(leaf):
            raise IntegrityError(
                where,
                f"has shape {arr.shape}, expected {np.shape(leaf)} (model config differs?)",
                "/".join(names),
            )
        leaves.append(jax.numpy.asarray(arr, dtype=np.asarray(leaf).dtype))
    return jax.tree_util.tree_unflatten(jax.tree.structure(template), leaves)


def tree_hash(tree: PyTree, length: int = 16) -> str:
    """SHA-256 (hex, first ``length`` chars) of all leaves' paths, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arr = np.ascontiguousarray(_host(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:length]


def with_digests(nested: dict) -> dict:
    """``nested`` plus the mirror tree :data:`DIGESTS` of each entry's sha256 (32 uint8)."""

    def mirror(node: dict) -> dict:
        return {
            k: mirror(v) if isinstance(v, dict) else _digest(np.asarray(v)) for k, v in node.items()
        }

    return {**nested, DIGESTS: mirror(nested)}


def _digest(arr: np.ndarray) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(array_sha256(arr)), np.uint8).copy()


def check_digests(nested: dict, where: str | Path) -> dict:
    """Verify and strip the :data:`DIGESTS` tree of a restored nested dict.

    Raises:
        IntegrityError: an entry's content differs from its recorded sha256, or an entry has
            no recorded digest (naming the checkpoint ``where`` and the entry).
    """
    nested = dict(nested)
    digests = nested.pop(DIGESTS, None)
    if digests is None:
        warn(where, "saved without content digests (older version): entries not verified")
        return nested

    def walk(node: Any, dig: Any, names: list[str]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                d = dig.get(k) if isinstance(dig, dict) else None
                if d is None:
                    raise IntegrityError(where, "no recorded digest", "/".join([*names, str(k)]))
                walk(v, d, [*names, str(k)])
            return
        if not np.array_equal(np.asarray(dig), _digest(np.asarray(node))):
            raise IntegrityError(
                where, "content differs from its recorded sha256 (corrupted)", "/".join(names)
            )

    walk(nested, digests, [])
    return nested


def solo_options() -> ocp.options.MultiprocessingOptions:
    """Orbax multiprocessing options under which this process saves or restores alone (the
    default options in a single-process run)."""
    if jax.process_count() == 1:
        return ocp.options.MultiprocessingOptions()
    i = jax.process_index()
    return ocp.options.MultiprocessingOptions(primary_host=i, active_processes={i})


def standard_checkpointer() -> ocp.StandardCheckpointer:
    """An orbax ``StandardCheckpointer`` for this process alone (:func:`solo_options`)."""
    return ocp.StandardCheckpointer(multiprocessing_options=solo_options())


def _restore(fn, where: Path, *args, **kwargs):
    """Run an orbax restore; its failures on damaged files become an IntegrityError."""
    try:
        return fn(*args, **kwargs)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - orbax / tensorstore raise many types
        raise IntegrityError(
            where, f"cannot be restored (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from err


class CheckpointManager:
    """Periodic checkpoints of a pytree under ``directory/<step>``.

    Args:
        directory: folder of the run's checkpoints (created).
        save_every: :meth:`should_save` is true every this many steps (0: never, callers save
            at the end themselves).
        max_to_keep: keep only the latest few.
    """

    def __init__(self, directory: str | Path, save_every: int = 0, max_to_keep: int = 2):
        self.directory = Path(directory).resolve()
        self.save_every = int(save_every)
        solo = jax.process_count() > 1  # orbax creates no folder for a subset of processes
        if solo:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=not solo,
                enable_async_checkpointing=False,
                multiprocessing_options=solo_options(),
            ),
        )

    def should_save(self, step: int) -> bool:
        return self.save_every > 0 and step % self.save_every == 0

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def save(self, step: int, tree: PyTree) -> None:
        """Write the checkpoint of ``step`` (overwrites nothing: an existing step is kept)."""
        if step in self._mngr.all_steps():
            return
        nested = with_digests(tree_to_nested(tree))
        self._mngr.save(step, args=ocp.args.StandardSave(nested), force=True)
        self._mngr.wait_until_finished()

    def restore(self, template: PyTree, step: int | None = None) -> PyTree:
        """Restore ``step`` (default: latest) into the structure of ``template``.

        Raises:
            FileNotFoundError: no checkpoint; IntegrityError: unreadable, corrupted (digest
                mismatch) or of another structure, naming the step directory and the entry.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"CheckpointManager: no checkpoint in {self.directory}")
        where = self.directory / str(step)
        nested = _restore(self._mngr.restore, where, step, args=ocp.args.StandardRestore())
        nested = check_digests(nested, where)
        return nested_to_tree(nested, template, where=where)

    def close(self) -> None:
        self._mngr.close()


def save_decoder(path: str | Path, params: PyTree, meta: dict) -> str:
    """Save a trained model (params pytree) to the orbax directory ``path`` with ``meta.json``.

    ``meta`` should hold ``kind``, ``model_config`` and ``image_shape``; the content hash
    (:func:`tree_hash`) is added as ``meta["hash"]`` and returned. An existing ``path`` is
    replaced only after the new checkpoint is complete.
    """
    path = Path(path).resolve()
    digest = tree_hash(params)
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with standard_checkpointer() as ckptr:
        ckptr.save(tmp / "params", tree_to_nested(params))
    write_json(tmp / "meta.json", {**meta, "hash": digest})
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)
    return digest


def read_decoder_meta(path: str | Path) -> dict:
    """The ``meta.json`` of a decoder checkpoint (kind, model_config, image_shape, hash)."""
    meta_path = Path(path) / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"read_decoder_meta: {meta_path} not found (not a decoder?)")
    meta = read_json_file(meta_path, "decoder meta.json")
    if not isinstance(meta, dict) or not {"kind", "model_config", "hash"} <= set(meta):
        raise IntegrityError(meta_path, "must be a mapping with kind, model_config and hash")
    return meta


def load_decoder(path: str | Path, template: PyTree, check_hash: bool = True) -> PyTree:
    """Restore the params saved by :func:`save_decoder` into ``template``'s structure.

    Raises IntegrityError (a ValueError) naming ``path`` if the checkpoint is unreadable, or
    its structure, shapes or content hash differ.
    """
    path = Path(path).resolve()
    meta = read_decoder_meta(path)
    with standard_checkpointer() as ckptr:
        nested = _restore(ckptr.restore, path, path / "params")
    params = nested_to_tree(nested, template, where=path)
    if check_hash and tree_hash(params) != meta.get("hash"):
        raise IntegrityError(
            path, f"decoder content hash {tree_hash(params)} does not match meta.json"
        )
    return params


__all__ = [
    "DIGESTS",
    "CheckpointManager",
    "check_digests",
    "load_decoder",
    "nested_to_tree",
    "read_decoder_meta",
    "save_decoder",
    "solo_options",
    "standard_checkpointer",
    "tree_hash",
    "tree_to_nested",
    "with_digests",
]
