"""HDF5 dataset store of simulated (or imported DeepLense) lensing images.

Layout of a store made by :func:`generate` (one group per split ``train``, ``val``, ``test``)::

    /<split>/images              (N, H, W) float32  clip(raw, 0) / max(raw), so in [0, 1]
    /<split>/image_scale         (N,) float64       max(raw), data units (e- / s)
    /<split>/labels              (N,) int64         0 no_sub, 1 cdm, 2 axion; label = index % 3
    /<split>/source_center       (N, 2) float64     arcsec
    /<split>/source_amp          (N,) float64       lenstronomy amp of the Sersic source
    /<split>/exposure_time       (N,) float64       s (per exposure)
    /<split>/noise_seed          (N,) int64         numpy RandomState seed of the noise
    /<split>/n_sub               (N,) int64         CDM subhalos used (25 for cdm)
    /<split>/sub_mass            (N, 25) float64    CDM subhalo masses, solar masses (0 padded)
    /<split>/sub_pos             (N, 25, 2) float64 CDM subhalo positions, arcsec (0 padded)
    /<split>/vortex_angle        (N,) float64       rad (NaN unless axion)
    /<split>/vortex_half_length  (N,) float64       arcsec (NaN unless axion)
    /<split>/m_a                 (N,) float64       axion mass in eV (NaN unless axion)

File attributes: ``format``, ``recipe``, ``class_names`` (JSON), ``seed``, ``enflens_version``,
``lenstronomy_version``, ``kwargs_band`` (JSON, the band actually used), ``recipe_json`` (the
full recipe), ``n_per_class`` (JSON), ``sha256_<split>`` (of the C-order float32 image bytes),
``hash_format`` (:data:`enflens.integrity.HASH_FORMAT`), ``generation_seconds`` (wall time, all
included) and ``images_per_second`` (simulation and writing, after the one-time lenstronomy
import and numba compilation). Each split group has ``content_sha256``: JSON ``{array:
sha256}`` of every array in it (images, labels, parameters; see
:func:`enflens.integrity.array_sha256`). Together with :mod:`enflens.data.lensing` these rebuild
every sample's exact lenstronomy kwargs (:func:`sample_params`).

Sample ``index`` of split ``s`` draws from ``numpy.random.default_rng([seed, split_id(s),
index])``, so the images are bit-identical whatever the number of workers. Workers are started
with ``spawn`` (never ``fork``, which can deadlock a process that has JAX's threads running).

:func:`load` checks every array (dtype, shape, label range, finite values, pixels in [0, 1], row
counts) and by default the content hash; any problem raises :class:`DataFileError` (an
:class:`enflens.integrity.IntegrityError`) naming the file, the split or array and the problem.
Stores written before ``content_sha256`` existed still load: their image hash is checked and an
:class:`enflens.integrity.IntegrityWarning` says that labels and parameters are not covered.

Command line::

    python -m enflens.data generate --recipe model_ii --n-per-class N --seed S --out X.h5 \
        [--workers W] [--n-val N] [--n-test N] [--force]
    python -m enflens.data import-deeplense FOLDER --out X.h5 [--force]
    python -m enflens.data info X.h5

User errors print one line and exit 1; ``--debug`` (before the command) shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing as mp
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from enflens import __version__
from enflens.data import lensing
from enflens.integrity import (
    HASH_ATTR,
    HASH_FORMAT,
    READ_ERRORS,
    ArrayHasher,
    ArraySpec,
    IntegrityError,
    array_sha256,
    check_arrays,
    open_hdf5,
    read_json_attr,
    read_npy,
    verify_sha256,
    warn,
)
from enflens.io import atomic_path, check_output

FORMAT = "enflens-lensing-v1"
IMPORT_FORMAT = "enflens-deeplense-import-v1"
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Per-sample parameter arrays of a generated store (besides images, image_scale, labels).
PARAM_FIELDS: tuple[str, ...] = (
    "source_center",
    "source_amp",
    "exposure_time",
    "noise_seed",
    "n_sub",
    "sub_mass",
    "sub_pos",
    "vortex_angle",
    "vortex_half_length",
    "m_a",
)
#: Folder names accepted by :func:`import_deeplense`, per label.
CLASS_ALIASES: dict[str, int] = {
    "no_sub": 0,
    "nosub": 0,
    "no_substructure": 0,
    "cdm": 1,
    "sphere": 1,
    "subhalo": 1,
    "subhalos": 1,
    "axion": 2,
    "vort": 2,
    "vortex": 2,
}


#: A dataset file is missing parts, truncated, corrupt, or not what the caller asked for: the
#: one :class:`enflens.integrity.IntegrityError` (a ValueError) of every store, under its old name.
#: ``DataFileError(path, problem, where)`` with ``where`` the split or array.
DataFileError = IntegrityError


# --- generation -----------------------------------------------------------------------------
Task = tuple[int, int, int, int]  # (seed, split_id, start, stop)
Chunk = dict[str, np.ndarray]
_WORKER_SIM: lensing.Simulator | None = None


def _init_worker(recipe: str) -> None:
    global _WORKER_SIM
    _WORKER_SIM = lensing.Simulator(recipe)


def _simulate_chunk(task: Task) -> Chunk:
    """Render samples [start, stop) of one split with the worker's simulator."""
    seed, split_id, start, stop = task
    sim = _WORKER_SIM
    assert sim is not None, "worker simulator not initialised"
    n = stop - start
    npix = sim.recipe.num_pix
    out: dict[str, np.ndarray] = {
        "images": np.empty((n, npix, npix), np.float32),
        "image_scale": np.empty(n),
        "labels": np.empty(n, np.int64),
        "source_center": np.empty((n, 2)),
        "source_amp": np.empty(n),
        "exposure_time": np.empty(n),
        "noise_seed": np.empty(n, np.int64),
        "n_sub": np.empty(n, np.int64),
        "sub_mass": np.empty((n, lensing.MAX_SUB)),
        "sub_pos": np.empty((n, lensing.MAX_SUB, 2)),
        "vortex_angle": np.empty(n),
        "vortex_half_length": np.empty(n),
        "m_a": np.empty(n),
    }
    for k, index in enumerate(range(start, stop)):
        raw, draw = sim.sample(seed, split_id, index)
        out["images"][k], out["image_scale"][k] = lensing.normalise(raw)
        out["labels"][k] = draw.label
        for name in PARAM_FIELDS:
            out[name][k] = getattr(draw, name)
    return out


def _chunks(seed: int, sizes: dict[str, int], chunk: int) -> list[Task]:
    tasks = []
    for split, n in sizes.items():
        for start in range(0, n, chunk):
            tasks.append((seed, lensing.SPLIT_IDS[split], start, min(start + chunk, n)))
    return tasks


@contextlib.contextmanager
def _runner(recipe: str, workers: int) -> Iterator[Callable[[list[Task]], Iterator[Chunk]]]:
    """Yield ``run(tasks)`` giving chunk results in task order, in-process or from a Pool.

    The Pool is started before any output file is opened; its workers build their Simulator
    once (initializer). They are started with ``spawn``: a forked copy of a process whose JAX
    threads hold locks can deadlock. The workers import only this module's dependencies
    (numpy, h5py, lenstronomy), never JAX, and not the caller's ``__main__`` either
    (:func:`_no_main_reimport`), so a script without an ``if __name__ == "__main__":`` guard
    still works.
    """
    if workers == 1:
        # Build and warm up the simulator first (imports, numba compilation: seconds).
        _init_worker(recipe)
        assert _WORKER_SIM is not None
        _WORKER_SIM.sample(0, 0, 0)
        yield lambda tasks: (_simulate_chunk(t) for t in tasks)
        return
    with _no_main_reimport():
        pool = _mp_context().Pool(workers, _init_worker, (recipe,))
    with pool:
        yield lambda tasks: pool.imap(_simulate_chunk, tasks, chunksize=1)


@contextlib.contextmanager
def _no_main_reimport() -> Iterator[None]:
    """While workers are spawned, hide ``__main__`` so they do not re-run the caller's script.

    ``spawn`` re-imports the parent's main module in every child so that functions defined
    there can be unpickled; the simulation workers only run functions of this module, and
    re-running an unguarded script (or a notebook exported as one) in each worker would
    recurse. The swap lasts only for the synchronous start of the workers.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _mp_context() -> mp.context.BaseContext:
    """The multiprocessing context of the simulation workers (``spawn``)."""
    return mp.get_context("spawn")


def _check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def generate(
    recipe: str,
    n_per_class: int,
    seed: int,
    out: str | Path,
    workers: int = 1,
    n_val: int | None = None,
    n_test: int | None = None,
    chunk_size: int = 64,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Simulate a dataset and write it atomically to ``out`` (HDF5).

    Args:
        recipe: ``model_i``, ``model_ii`` or ``model_iii``.
        n_per_class: training images per class.
        seed: dataset seed (>= 0); splits use disjoint seed sequences.
        out: output path (.h5).
        workers: processes; the images do not depend on it.
        n_val: validation images per class (default ``n_per_class // 10``).
        n_test: test images per class (default ``n_per_class // 6``).
        chunk_size: images per worker task.
        progress: show a tqdm bar.
        force: replace an existing ``out`` (its cache record ``<out>.params.json`` is removed).

    Returns:
        ``out`` as a Path.

    Raises:
        ValueError: a bad argument; FileExistsError: ``out`` exists and ``force`` is false;
        IsADirectoryError / PermissionError: ``out`` cannot be written. All before any work.
    """
    r = lensing.get_recipe(recipe)
    n_per_class = _check_count("n_per_class", n_per_class, 1)
    seed = _check_count("seed", seed, 0)
    workers = _check_count("workers", workers, 1)
    chunk_size = _check_count("chunk_size", chunk_size, 1)
    n_val = n_per_class // 10 if n_val is None else _check_count("n_val", n_val, 0)
    n_test = n_per_class // 6 if n_test is None else _check_count("n_test", n_test, 0)
    per_class = {"train": n_per_class, "val": n_val, "test": n_test}
    n_cls = len(lensing.CLASS_NAMES)
    sizes = {s: n_cls * n for s, n in per_class.items()}
    tasks = _chunks(seed, sizes, chunk_size)
    out = check_output(out, force)  # a replaced file is newer than its cache record
    npix = r.num_pix
    hashes = {s: hashlib.sha256() for s in SPLITS}
    content: dict[str, dict[str, ArrayHasher]] = {s: {} for s in SPLITS}
    import lenstronomy

    t0 = time.perf_counter()
    with _runner(r.name, workers) as run, atomic_path(out) as tmp:
        t_sim = time.perf_counter()  # after the one-time imports / numba compilation
        with h5py.File(tmp, "w") as f:
            groups = {}
            for s in SPLITS:
                g = f.create_group(s)
                n = sizes[s]
                chunks = (min(n, 256), npix, npix) if n else None
                g.create_dataset("images", (n, npix, npix), np.float32, chunks=chunks)
                g.create_dataset("image_scale", (n,), np.float64)
                g.create_dataset("labels", (n,), np.int64)
                g.create_dataset("source_center", (n, 2), np.float64)
                for name in ("source_amp", "exposure_time", "vortex_angle"):
                    g.create_dataset(name, (n,), np.float64)
                g.create_dataset("vortex_half_length", (n,), np.float64)
                g.create_dataset("m_a", (n,), np.float64)
                g.create_dataset("noise_seed", (n,), np.int64)
                g.create_dataset("n_sub", (n,), np.int64)
                g.create_dataset("sub_mass", (n, lensing.MAX_SUB), np.float64)
                g.create_dataset("sub_pos", (n, lensing.MAX_SUB, 2), np.float64)
                g.attrs["n_per_class"] = per_class[s]
                content[s] = {k: ArrayHasher(d.dtype, d.shape) for k, d in g.items()}
                groups[lensing.SPLIT_IDS[s]] = (s, g)
            bar = tqdm(total=sum(sizes.values()), desc=f"simulate {r.name}", disable=not progress)
            for task, res in zip(tasks, run(tasks), strict=True):
                _, split_id, start, stop = task
                s, g = groups[split_id]
                for name, arr in res.items():
                    g[name][start:stop] = arr
                    content[s][name].update(arr)  # chunks of a split arrive in row order
                hashes[s].update(np.ascontiguousarray(res["images"], "<f4").tobytes())
                bar.update(stop - start)
            bar.close()
            seconds = time.perf_counter() - t0
            sim_seconds = time.perf_counter() - t_sim
            a = f.attrs
            a["format"] = FORMAT
            a["recipe"] = r.name
            a["class_names"] = json.dumps(list(lensing.CLASS_NAMES))
            a["seed"] = seed
            a["enflens_version"] = __version__
            a["lenstronomy_version"] = lenstronomy.__version__
            a["kwargs_band"] = json.dumps(r.kwargs_band, sort_keys=True)
            a["recipe_json"] = json.dumps(r.to_dict(), sort_keys=True)
            a["n_per_class"] = json.dumps(per_class)
            a["normalisation"] = "images = clip(raw, 0) / max(raw); image_scale = max(raw)"
            a["generation_seconds"] = seconds
            a["images_per_second"] = sum(sizes.values()) / max(sim_seconds, 1e-9)
            a["workers"] = workers
            a["hash_format"] = HASH_FORMAT
            for s in SPLITS:
                a[f"sha256_{s}"] = hashes[s].hexdigest()
                f[s].attrs["sha256"] = hashes[s].hexdigest()
                digests = {k: h.hexdigest() for k, h in content[s].items()}
                f[s].attrs[HASH_ATTR] = json.dumps(digests, sort_keys=True)
    return out


# --- loading --------------------------------------------------------------------------------
@dataclasses.dataclass
class LensingSet:
    """One split of a store.

    Attributes:
        images: (N, H, W) float32 in [0, 1].
        labels: (N,) int64 class indices.
        image_scale: (N,) float64 raw maximum per image.
        params: per-sample arrays (see the module docstring), by name.
        attrs: file attributes.
        class_names: names in label order.
        path, split: where it came from.
    """

    images: np.ndarray
    labels: np.ndarray
    image_scale: np.ndarray
    params: dict[str, np.ndarray]
    attrs: dict[str, Any]
    class_names: tuple[str, ...]
    path: Path
    split: str

    def __len__(self) -> int:
        return len(self.labels)


def _open(path: str | Path) -> h5py.File:
    return open_hdf5(path, "dataset file")


def _attrs(f: h5py.File, path: Path) -> dict[str, Any]:
    """The file attributes, with ``format``, ``recipe`` and ``class_names`` checked."""
    try:
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    except READ_ERRORS as err:
        raise DataFileError(path, f"attributes unreadable (truncated or corrupt?): {err}") from err
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    if attrs.get("format") not in (FORMAT, IMPORT_FORMAT):
        raise DataFileError(
            path,
            f"not an enflens lensing store (format attribute {attrs.get('format')!r})",
        )
    names = read_json_attr(attrs, "class_names", path)
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise DataFileError(path, f"attribute 'class_names' must be a list of names, got {names!r}")
    if not isinstance(attrs.get("recipe"), str):
        raise DataFileError(path, "the attribute 'recipe' is missing")
    return attrs


def _recipe(attrs: dict[str, Any], path: Path) -> lensing.Recipe:
    d = read_json_attr(attrs, "recipe_json", path)
    try:
        return lensing.Recipe.from_dict(d)
    except (TypeError, KeyError, ValueError) as err:
        raise DataFileError(path, f"attribute 'recipe_json' is not a recipe: {err}") from err


def split_specs(attrs: dict[str, Any], path: Path) -> dict[str, ArraySpec]:
    """The :class:`enflens.integrity.ArraySpec` of every known array of one split.

    Images are (n, H, H) float32 in [0, 1] (H the recipe's ``num_pix`` for generated stores),
    labels integers in [0, number of classes), parameters of the layout's shapes; all finite
    except the NaN-padded axion parameters.
    """
    n_cls = len(read_json_attr(attrs, "class_names", path))
    npix = _recipe(attrs, path).num_pix if attrs["format"] == FORMAT else None
    specs = {
        "images": ArraySpec(dtype="float32", tail=(npix, npix), low=0.0, high=1.0),
        "labels": ArraySpec("iu", low=0, high=n_cls, high_open=True),
        "image_scale": ArraySpec("f", low=0.0),
        "m_a": ArraySpec("f", nan_ok=True, low=0.0),
    }
    if attrs["format"] == IMPORT_FORMAT:
        specs["source_file"] = ArraySpec("OS", finite=False)
        return specs
    m = lensing.MAX_SUB
    specs.update(
        source_center=ArraySpec("f", (2,)),
        source_amp=ArraySpec("f"),
        exposure_time=ArraySpec("f", low=0.0),
        noise_seed=ArraySpec("iu"),
        n_sub=ArraySpec("iu", low=0, high=m),
        sub_mass=ArraySpec("f", (m,), low=0.0),
        sub_pos=ArraySpec("f", (m, 2)),
        vortex_angle=ArraySpec("f", nan_ok=True),
        vortex_half_length=ArraySpec("f", nan_ok=True, low=0.0),
    )
    return specs


def images_sha256(images: np.ndarray) -> str:
    """sha256 of the C-order little-endian float32 bytes of (N, H, W) images."""
    return hashlib.sha256(np.ascontiguousarray(images, "<f4").tobytes()).hexdigest()


def _group(f: h5py.File, path: Path, split: str) -> h5py.Group:
    try:
        names = sorted(f.keys())
        g = f[split] if split in f else None
    except READ_ERRORS as err:
        raise DataFileError(path, f"unreadable (truncated or corrupt?): {err}") from err
    if not isinstance(g, h5py.Group):
        raise DataFileError(path, f"no split {split!r} (has: {', '.join(names)})")
    return g


def _read_split(f: h5py.File, path: Path, split: str) -> tuple[dict[str, np.ndarray], dict]:
    """All arrays of a split and the split group's attributes, read errors as DataFileError."""
    g = _group(f, path, split)
    arrays: dict[str, np.ndarray] = {}
    name = None
    try:
        for name in g.keys():
            if not isinstance(g[name], h5py.Dataset):
                raise DataFileError(path, "is a group, expected an array", f"{split}/{name}")
            arrays[name] = g[name][()]
        gattrs = dict(g.attrs.items())
    except DataFileError:
        raise
    except READ_ERRORS as err:
        where = split if name is None else f"{split}/{name}"
        raise DataFileError(path, f"reading failed (truncated or corrupt?): {err}", where) from err
    return arrays, gattrs


def load(
    path: str | Path, split: str, recipe: str | None = None, verify: bool = True
) -> LensingSet:
    """Read one split of a store, checking it.

    Every array is checked against :func:`split_specs` (dtype, shape, label range, finite
    values, pixel range, row counts). With ``verify`` (the default) every array's sha256 is
    compared with the ``content_sha256`` record; for 12,900 64x64 images this costs well under
    a second. Stores written before that record existed: the image hash is checked and an
    :class:`enflens.integrity.IntegrityWarning` says labels and parameters are not covered.

    Args:
        path: the .h5 file.
        split: ``train``, ``val`` or ``test`` (or a split name of an imported file).
        recipe: if given, the file's recipe must be this one.
        verify: check the content hash (False skips only the hash, not the other checks).

    Raises:
        FileNotFoundError: no such file.
        DataFileError (an IntegrityError, a ValueError): unreadable/truncated file, wrong format
            or recipe, missing split, array or attribute, an array of the wrong dtype or shape,
            labels out of range, non-finite values, pixels outside [0, 1], row counts that
            differ, a hash mismatch. The message names the file, the split or array, the problem.
    """
    path = Path(path)
    with _open(path) as f:
        attrs = _attrs(f, path)
        if recipe is not None and attrs.get("recipe") != recipe:
            raise DataFileError(path, f"holds recipe {attrs.get('recipe')!r}, expected {recipe!r}")
        arrays, gattrs = _read_split(f, path, split)
    check_arrays(arrays, split_specs(attrs, path), path, split, rows_from="labels")
    images = arrays["images"]
    if images.shape[1] != images.shape[2]:
        raise DataFileError(
            path, f"images are {images.shape[1]}x{images.shape[2]}, expected square", split
        )
    if verify:
        _verify(arrays, attrs, gattrs, path, split)
    images = arrays.pop("images")
    labels = arrays.pop("labels")
    scale = arrays.pop("image_scale")
    return LensingSet(
        images=images,
        labels=labels,
        image_scale=scale,
        params=arrays,
        attrs=attrs,
        class_names=tuple(read_json_attr(attrs, "class_names", path)),
        path=path,
        split=split,
    )


class SplitRows:
    """The images of one split, read row by row: a process of a multi-process run reads only
    the rows its devices work on (:func:`enflens.metalearn.encode.encode`).

    Opening checks the file's format and recipe, and the labels and the image array's dtype
    and shape (as :func:`load`); every read checks its rows (finite, in [0, 1]). The content
    hash covers whole arrays, so it is not checked here: verify the file once with
    :func:`load` (e.g. on process 0) when that matters.

    Attributes:
        path, split: the store and split.
        shape: (n, H, W) of the images; labels: (n,) int64, read whole (small).
        rows_read: number of distinct rows read so far (with repeats within a call removed).

    Raises:
        FileNotFoundError, DataFileError: as :func:`load`, naming the file, split and array.
    """

    def __init__(self, path: str | Path, split: str, recipe: str | None = None):
        self.path, self.split = Path(path), split
        with _open(self.path) as f:
            attrs = _attrs(f, self.path)
            if recipe is not None and attrs.get("recipe") != recipe:
                raise DataFileError(
                    self.path, f"holds recipe {attrs.get('recipe')!r}, expected {recipe!r}"
                )
            g = _group(f, self.path, split)
            for name in ("images", "labels"):
                if not isinstance(g.get(name), h5py.Dataset):
                    raise DataFileError(self.path, "the array is missing", f"{split}/{name}")
            images = g["images"]
            try:
                labels = g["labels"][()]
            except READ_ERRORS as err:
                raise DataFileError(self.path, f"reading failed: {err}", f"{split}/labels") from err
            self.shape = tuple(int(v) for v in images.shape)
            dtype = images.dtype
        self._specs = split_specs(attrs, self.path)
        check_arrays({"labels": labels}, {"labels": self._specs["labels"]}, self.path, split)
        empty = {"images": np.zeros((0, *self.shape[1:]), dtype)}  # dtype and image shape
        check_arrays(empty, {"images": self._specs["images"]}, self.path, split)
        if self.shape[0] != len(labels):
            raise DataFileError(
                self.path, f"has {self.shape[0]} rows, but 'labels' has {len(labels)}",
                f"{split}/images",
            )  # fmt: skip
        self.labels = labels
        self.rows_read = 0

    def __len__(self) -> int:
        return self.shape[0]

    def read_rows(self, rows: Any) -> np.ndarray:
        """Images of ``rows`` (k,) integer indices (any order, repeats allowed) -> (k, H, W)."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(
                f"dataset file {self.path}: rows {rows.min()}..{rows.max()} out of range for "
                f"split {self.split!r} ({len(self)} images)"
            )
        unique, inverse = np.unique(rows, return_inverse=True)
        try:
            with _open(self.path) as f:
                block = f[self.split]["images"][unique]
        except READ_ERRORS as err:
            raise DataFileError(
                self.path, f"reading failed (truncated or corrupt?): {err}", f"{self.split}/images"
            ) from err
        check_arrays({"images": block}, {"images": self._specs["images"]}, self.path, self.split)
        self.rows_read += len(unique)
        return block[inverse]

    __getitem__ = read_rows


def _verify(arrays: dict, attrs: dict, gattrs: dict, path: Path, split: str) -> None:
    """Compare the content hash of a split with the one recorded at writing."""
    if HASH_ATTR in gattrs:
        recorded = read_json_attr(gattrs, HASH_ATTR, path, split)
        if not isinstance(recorded, dict):
            raise DataFileError(path, f"{HASH_ATTR} is not a mapping", split)
        verify_sha256(arrays, recorded, path, split)
        return
    want = attrs.get(f"sha256_{split}")
    if want is None:
        raise DataFileError(
            path, "records no content hash; cannot verify (load with verify=False)", split
        )
    got = images_sha256(arrays["images"])
    if want != got:
        raise DataFileError(
            path,
            f"sha256 of split {split!r} images is {got}, the file records {want} "
            "(data corrupted or modified)",
            f"{split}/images",
        )
    warn(
        path,
        "written before content hashes: images verified, labels and parameters not covered "
        "by a hash (regenerate the file to cover them)",
        split,
    )


def sample_params(file: str | Path | h5py.File, split: str, index: int) -> dict[str, Any]:
    """The exact lenstronomy description of one stored sample.

    Args:
        file: path or open h5py File of a generated store.
        split: split name.
        index: sample index in the split.

    Returns:
        :func:`enflens.data.lensing.describe` dict: ``lens_model_list``, ``kwargs_lens``,
        ``source_model_list``, ``kwargs_source``, ``kwargs_band``, ``kwargs_numerics``,
        ``num_pix``, ``noise_seed``, ``m_a`` (eV or None), ``label``, ... ;
        ``enflens.data.lensing.render(params, noise=True)`` reproduces the raw image.

    Raises:
        DataFileError: a parameter array or attribute is missing or unreadable (named).
    """
    if isinstance(file, h5py.File):
        return _sample_params(file, Path(file.filename), split, index)
    with _open(file) as f:
        return _sample_params(f, Path(file), split, index)


def _sample_params(f: h5py.File, path: Path, split: str, index: int) -> dict[str, Any]:
    attrs = _attrs(f, path)
    if attrs["format"] != FORMAT:
        raise DataFileError(
            path,
            f"was imported ({attrs['format']}): it has no lenstronomy description of its samples",
        )
    g = _group(f, path, split)
    recipe = _recipe(attrs, path)
    name = "labels"
    try:
        for name in ("labels", "image_scale", *PARAM_FIELDS):
            if name not in g:
                raise DataFileError(path, "the array is missing", f"{split}/{name}")
        n = g["labels"].shape[0]
        if not 0 <= index < n:
            raise IndexError(f"dataset file {path}: index {index} out of range for split "
                             f"{split!r} ({n})")  # fmt: skip
        row = {}
        for name in ("labels", "image_scale", *PARAM_FIELDS):
            row[name] = g[name][index]
    except (DataFileError, IndexError):
        raise
    except READ_ERRORS as err:
        raise DataFileError(
            path, f"reading failed (truncated or corrupt?): {err}", f"{split}/{name}"
        ) from err
    try:
        draw = lensing.SampleDraw(
            label=int(row["labels"]),
            source_center=np.asarray(row["source_center"], np.float64).reshape(2),
            source_amp=float(row["source_amp"]),
            exposure_time=float(row["exposure_time"]),
            noise_seed=int(row["noise_seed"]),
            sub_mass=np.asarray(row["sub_mass"], np.float64).reshape(lensing.MAX_SUB),
            sub_pos=np.asarray(row["sub_pos"], np.float64).reshape(lensing.MAX_SUB, 2),
            n_sub=int(row["n_sub"]),
            vortex_angle=float(row["vortex_angle"]),
            vortex_half_length=float(row["vortex_half_length"]),
            m_a=float(row["m_a"]),
        )
    except (TypeError, ValueError) as err:
        raise DataFileError(path, f"sample {index} has malformed parameters: {err}", split) from err
    params = lensing.describe(recipe, draw)
    params["image_scale"] = float(row["image_scale"])
    return params


# --- DeepLense import -----------------------------------------------------------------------
def _class_dirs(folder: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    unknown = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = CLASS_ALIASES.get(d.name.lower())
        if label is None:
            unknown.append(d.name)
        elif label in found:
            raise DataFileError(folder, f"two folders for class {lensing.CLASS_NAMES[label]}")
        else:
            found[label] = d
    missing = [lensing.CLASS_NAMES[k] for k in range(3) if k not in found]
    if unknown or missing:
        raise DataFileError(
            folder,
            "expected one folder per class (no_sub, cdm|sphere|subhalo, axion|vort); "
            f"missing {missing}, unrecognised {unknown}",
        )
    return found


def import_deeplense(
    folder: str | Path,
    out: str | Path,
    recipe: str = "deeplense",
    split: str = "train",
    force: bool = False,
) -> Path:
    """Convert a DeepLense download (folders of .npy per class) into an HDF5 store.

    ``folder`` holds either the class folders directly (written as split ``split``) or one
    sub-folder per split (``train``, ``val``, ``test``) each holding class folders. Images are
    normalised like :func:`generate` (``clip(x, 0) / max(x)``); axion files carrying
    ``[image, m_a]`` keep ``m_a`` (eV). Per split: ``images``, ``labels``, ``image_scale``,
    ``m_a``, ``source_file``, and the ``content_sha256`` record.

    The axion files (object arrays) are read by :func:`enflens.integrity.read_npy`, which
    admits only numpy's array, dtype and scalar constructors: no file can run code. An existing
    ``out`` is replaced only with ``force``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"DeepLense folder {folder} does not exist")
    out = check_output(out, force)  # a replaced file is newer than its cache record
    sub = {p.name: p for p in folder.iterdir() if p.is_dir() and p.name in SPLITS}
    layout = {s: _class_dirs(p) for s, p in sub.items()} if sub else {split: _class_dirs(folder)}
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        shape = None
        for s, classes in layout.items():
            images, labels, scales, m_as, names = [], [], [], [], []
            for label, d in sorted(classes.items()):
                files = sorted(d.glob("*.npy"))
                if not files:
                    raise DataFileError(d, "no .npy files")
                for p in files:
                    img, m_a = read_npy(p)  # runs no code from the file
                    if shape is None:
                        shape = img.shape
                    if img.shape != shape:
                        raise DataFileError(p, f"image shape {img.shape} differs from {shape}")
                    try:
                        norm, scale = lensing.normalise(img)
                    except ValueError as e:
                        raise DataFileError(p, str(e)) from e
                    images.append(norm)
                    scales.append(scale)
                    labels.append(label)
                    m_as.append(m_a)
                    names.append(str(p.relative_to(folder)))
            g = f.create_group(s)
            stack = np.stack(images).astype(np.float32)
            g.create_dataset("images", data=stack)
            g.create_dataset("labels", data=np.asarray(labels, np.int64))
            g.create_dataset("image_scale", data=np.asarray(scales, np.float64))
            g.create_dataset("m_a", data=np.asarray(m_as, np.float64))
            g.create_dataset("source_file", data=np.asarray(names, dtype=h5py.string_dtype()))
            f.attrs[f"sha256_{s}"] = g.attrs["sha256"] = images_sha256(stack)
            digests = {k: array_sha256(d[()]) for k, d in g.items()}
            g.attrs[HASH_ATTR] = json.dumps(digests, sort_keys=True)
        f.attrs["format"] = IMPORT_FORMAT
        f.attrs["hash_format"] = HASH_FORMAT
        f.attrs["recipe"] = recipe
        f.attrs["class_names"] = json.dumps(list(lensing.CLASS_NAMES))
        f.attrs["source_folder"] = str(folder.resolve())
        f.attrs["enflens_version"] = __version__
        f.attrs["normalisation"] = "images = clip(raw, 0) / max(raw); image_scale = max(raw)"
    return out


# --- command line ---------------------------------------------------------------------------
def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _non_negative(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m enflens.data", description=__doc__.split("\n")[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="simulate a dataset")
    g.add_argument("--recipe", required=True, choices=lensing.RECIPE_NAMES)
    g.add_argument("--n-per-class", required=True, type=_positive, help="train images per class")
    g.add_argument("--seed", required=True, type=_non_negative)
    g.add_argument("--out", required=True, type=Path)
    g.add_argument("--workers", type=_positive, default=1)
    g.add_argument("--n-val", type=_non_negative, default=None, help="per class")
    g.add_argument("--n-test", type=_non_negative, default=None, help="per class")
    g.add_argument("--chunk-size", type=_positive, default=64)
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--force", action="store_true", help="replace an existing --out")
    i = sub.add_parser("import-deeplense", help="convert a DeepLense .npy folder")
    i.add_argument("folder", type=Path)
    i.add_argument("--out", required=True, type=Path)
    i.add_argument("--recipe", default="deeplense", help="name recorded as the file's recipe")
    i.add_argument("--split", default="train", help="split name for a folder without splits")
    i.add_argument("--force", action="store_true", help="replace an existing --out")
    n = sub.add_parser("info", help="summarise a store")
    n.add_argument("path", type=Path)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring).

    User errors (bad files, existing outputs, unreadable stores) print one line ``error: ...``
    and return 1; ``--debug`` re-raises them with the traceback.
    """
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except (IntegrityError, ValueError, OSError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def _run(args: argparse.Namespace) -> None:
    if args.command == "generate":
        out = generate(
            args.recipe,
            args.n_per_class,
            args.seed,
            args.out,
            workers=args.workers,
            n_val=args.n_val,
            n_test=args.n_test,
            chunk_size=args.chunk_size,
            progress=not args.no_progress,
            force=args.force,
        )
        print(out)
    elif args.command == "import-deeplense":
        out = import_deeplense(
            args.folder, args.out, recipe=args.recipe, split=args.split, force=args.force
        )
        print(out)
    else:
        with _open(args.path) as f:
            attrs = _attrs(f, args.path)
            for k in sorted(attrs):
                print(f"{k}: {attrs[k]}")
            for s in sorted(f.keys()):
                shape = _group(f, args.path, s)["images"].shape if "images" in f[s] else None
                if shape is None:
                    raise DataFileError(args.path, "the array 'images' is missing", s)
                print(f"{s}: {shape[0]} images {shape[1:]}")


if __name__ == "__main__":
    sys.exit(main())
