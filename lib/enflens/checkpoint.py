"""Orbax checkpoints of meta-learning runs and of trained decoders.

A pytree (the :class:`enflens.metalearn.outer.MetaState`: decoder params, frozen buffers, learned
inner rates and latent init, optax state, step, PRNG key) is stored as a nested dict of arrays whose
keys are the pytree path (``params/decoder/weights/0/value``...), so a checkpoint is readable
without the code and is restored into a template of the same structure; a missing or
mis-shaped entry raises a ValueError naming the checkpoint.

- :class:`CheckpointManager`: periodic run checkpoints (``<dir>/<step>/``), keep the last few,
  resume from the latest.
- :func:`save_decoder` / :func:`load_decoder`: the final trained model (one orbax directory plus a
  ``meta.json`` with model kind, config, image shape and a content hash) that latent stores refer
  to; :func:`tree_hash` is that hash.

Orbax writes into a temporary directory and renames it on success, so checkpoints are atomic.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from enflens.io import write_json

PyTree = Any


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
        node[names[-1]] = np.asarray(leaf)
    return out


def nested_to_tree(nested: dict, template: PyTree, where: str = "checkpoint") -> PyTree:
    """Inverse of :func:`tree_to_nested` into the structure of ``template`` (shapes checked)."""
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        names = [_key_name(k) for k in path] or ["value"]
        node = nested
        for name in names:
            if not isinstance(node, dict) or name not in node:
                raise ValueError(f"{where}: no entry {'/'.join(names)} (model/optimiser differ?)")
            node = node[name]
        arr = np.asarray(node)
        if arr.shape != np.shape(leaf):
            raise ValueError(
                f"{where}: entry {'/'.join(names)} has shape {arr.shape}, expected "
                f"{np.shape(leaf)} (model config differs?)"
            )
        leaves.append(jax.numpy.asarray(arr, dtype=np.asarray(leaf).dtype))
    return jax.tree_util.tree_unflatten(jax.tree.structure(template), leaves)


def tree_hash(tree: PyTree, length: int = 16) -> str:
    """SHA-256 (hex, first ``length`` chars) of all leaves' paths, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:length]


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
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
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
        self._mngr.save(step, args=ocp.args.StandardSave(tree_to_nested(tree)), force=True)
        self._mngr.wait_until_finished()

    def restore(self, template: PyTree, step: int | None = None) -> PyTree:
        """Restore ``step`` (default: latest) into the structure of ``template``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"CheckpointManager: no checkpoint in {self.directory}")
        nested = self._mngr.restore(step, args=ocp.args.StandardRestore())
        return nested_to_tree(nested, template, where=f"checkpoint {self.directory}/{step}")

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
    with ocp.StandardCheckpointer() as ckptr:
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
    return json.loads(meta_path.read_text())


def load_decoder(path: str | Path, template: PyTree, check_hash: bool = True) -> PyTree:
    """Restore the params saved by :func:`save_decoder` into ``template``'s structure.

    Raises ValueError naming ``path`` if the structure, shapes or the content hash differ.
    """
    path = Path(path).resolve()
    meta = read_decoder_meta(path)
    with ocp.StandardCheckpointer() as ckptr:
        nested = ckptr.restore(path / "params")
    params = nested_to_tree(nested, template, where=f"decoder checkpoint {path}")
    if check_hash and tree_hash(params) != meta.get("hash"):
        raise ValueError(f"load_decoder: content hash of {path} does not match its meta.json")
    return params


__all__ = [
    "CheckpointManager",
    "load_decoder",
    "nested_to_tree",
    "read_decoder_meta",
    "save_decoder",
    "tree_hash",
    "tree_to_nested",
]
