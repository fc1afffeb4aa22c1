"""Integrity checks for every store the project reads: datasets, latent stores, checkpoints.

Bad input never loads silently and never runs code. Readers (:func:`enflens.data.load`,
:func:`enflens.metalearn.latent_store.read_latent_store`, :mod:`enflens.checkpoint`) describe
each array they expect with an :class:`ArraySpec` and call :func:`check_arrays` (dtype, shape,
row counts that agree, finite values, value range), then compare per-array content hashes
(:func:`array_sha256`, :func:`verify_sha256`) recorded when the store was written. Every
problem raises one exception type, :class:`IntegrityError`, whose message names the file, the
split or array, and the problem.

Also here: :func:`read_npy`, which reads DeepLense ``.npy`` files (including the axion files,
object arrays ``[image, m_a]`` that ``.npy`` can only hold as a pickle) with a restricted
unpickler that admits only numpy's array, dtype and scalar constructors, and
:func:`check_params`, the one "unknown key / wrong type" check of configuration mappings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

#: Name of the per-array sha256 record (``{array name: hex digest}``) in stores.
HASH_ATTR = "content_sha256"
#: How :func:`array_sha256` hashes; recorded beside the digests.
HASH_FORMAT = "enflens-array-sha256-v1"


class IntegrityError(ValueError):
    """A store (file or checkpoint) is missing parts, truncated, corrupt or not as expected.

    Attributes:
        path: the file or directory.
        where: the split, group or array concerned (or None).
        problem: what is wrong.
    """

    def __init__(self, path: str | Path, problem: str, where: str | None = None):
        self.path = Path(path)
        self.where = where
        self.problem = problem
        loc = f"{path}" if where is None else f"{path} [{where}]"
        super().__init__(f"{loc}: {problem}")

    def __reduce__(self):  # picklable across processes despite the custom __init__
        return (type(self), (self.path, self.problem, self.where))


class IntegrityWarning(UserWarning):
    """A store loaded, but part of it could not be verified (e.g. written by an older version)."""


def warn(path: str | Path, problem: str, where: str | None = None) -> None:
    """Emit an :class:`IntegrityWarning` worded like an :class:`IntegrityError`."""
    loc = f"{path}" if where is None else f"{path} [{where}]"
    warnings.warn(f"{loc}: {problem}", IntegrityWarning, stacklevel=3)


# --- array checks -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """What one array of a store must look like.

    Attributes:
        kinds: allowed numpy dtype kinds (``"f"`` float, ``"i"``/``"u"`` integer, ``"O"``/``"S"``
            strings); ``dtype`` if given must match exactly instead.
        tail: the shape after the leading row dimension; ``None`` entries match any size, and
            ``tail=None`` any trailing shape.
        finite: every value must be finite (``nan_ok`` allows NaN, ``inf_ok`` allows +-inf).
        low, high: inclusive bounds of the values (None: unbounded); ``high_open`` makes the
            upper bound exclusive (label ranges).
        required: the array must be present.
    """

    kinds: str = "f"
    tail: tuple[int | None, ...] | None = ()
    dtype: str | None = None
    finite: bool = True
    nan_ok: bool = False
    inf_ok: bool = False
    low: float | None = None
    high: float | None = None
    high_open: bool = False
    required: bool = True


def _first_rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1)) if mask.ndim else []
    shown = ", ".join(str(r) for r in rows[:3])
    more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
    return f"row {shown}{more}"


def check_array(
    arr: np.ndarray, spec: ArraySpec, path: str | Path, where: str, n_rows: int | None = None
) -> None:
    """Raise :class:`IntegrityError` unless ``arr`` satisfies ``spec`` (and has ``n_rows`` rows).

    Example:
        >>> check_array(np.array([0, 1, 2]), ArraySpec("iu", low=0, high=3, high_open=True),
        ...             "x.h5", "labels")
        >>> check_array(np.array([0, 7]), ArraySpec("iu", low=0, high=3, high_open=True),
        ...             "x.h5", "labels")
        Traceback (most recent call last):
        ...
        enflens.integrity.IntegrityError: x.h5 [labels]: values must be in [0, 3), found 7 (row 1)
    """
    if spec.dtype is not None:
        if arr.dtype != np.dtype(spec.dtype):
            raise IntegrityError(path, f"dtype is {arr.dtype}, expected {spec.dtype}", where)
    elif arr.dtype.kind not in spec.kinds:
        raise IntegrityError(path, f"dtype is {arr.dtype}, expected kind {spec.kinds!r}", where)
    want = (n_rows, *spec.tail) if spec.tail is not None else (n_rows,)
    pairs = zip(want, arr.shape, strict=False)
    ndim_bad = arr.ndim < 1 if spec.tail is None else arr.ndim != len(want)
    if ndim_bad or any(w is not None and w != s for w, s in pairs):
        shown = ", ".join(
            "n" if i == 0 and w is None else "*" if w is None else str(w)
            for i, w in enumerate(want)
        )
        raise IntegrityError(path, f"shape is {arr.shape}, expected ({shown})", where)
    if arr.size == 0 or arr.dtype.kind not in "fiu":
        return
    if arr.dtype.kind == "f":
        lo, hi = float(np.min(arr)), float(np.max(arr))  # NaN propagates into both
        if not (math.isfinite(lo) and math.isfinite(hi)):
            if spec.finite:
                bad = np.zeros(arr.shape, bool)
                if not spec.nan_ok:
                    bad |= np.isnan(arr)
                if not spec.inf_ok:
                    bad |= np.isinf(arr)
                if bad.any():
                    what = " or ".join(
                        w for w, ok in (("NaN", spec.nan_ok), ("inf", spec.inf_ok)) if not ok
                    )
                    raise IntegrityError(path, f"holds {what} values ({_first_rows(bad)})", where)
            finite = arr[np.isfinite(arr)]
            if finite.size == 0:
                return
            lo, hi = float(finite.min()), float(finite.max())
    else:
        lo, hi = int(np.min(arr)), int(np.max(arr))
    below = spec.low is not None and lo < spec.low
    above = spec.high is not None and (hi >= spec.high if spec.high_open else hi > spec.high)
    if below or above:
        bracket = ")" if spec.high_open else "]"
        rng = f"[{_fmt(spec.low, '-inf')}, {_fmt(spec.high, 'inf')}{bracket}"
        with np.errstate(invalid="ignore"):
            bad = np.zeros(arr.shape, bool)
            if spec.low is not None:
                bad |= arr < spec.low
            if spec.high is not None:
                bad |= arr >= spec.high if spec.high_open else arr > spec.high
        value = lo if below else hi
        raise IntegrityError(
            path, f"values must be in {rng}, found {_fmt(value)} ({_first_rows(bad)})", where
        )


def _fmt(value: float | None, default: str = "") -> str:
    if value is None:
        return default
    if isinstance(value, (int, np.integer)) or float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def check_arrays(
    arrays: Mapping[str, np.ndarray],
    specs: Mapping[str, ArraySpec],
    path: str | Path,
    where: str | None = None,
    rows_from: str | None = None,
) -> int:
    """Check every array with a spec; all arrays (spec or not) must have the same row count.

    Args:
        arrays: name -> array as read from the store.
        specs: name -> :class:`ArraySpec`; a missing required array is an error.
        path: the store (for messages); where: the split or group (prefix of array names).
        rows_from: the array whose length is the row count (default: the first spec'd one).

    Returns:
        The row count n.
    """
    prefix = "" if where is None else f"{where}/"
    for name, spec in specs.items():
        if spec.required and name not in arrays:
            raise IntegrityError(path, f"the array {name!r} is missing", where)
    ref = rows_from or next(k for k in specs if k in arrays)
    n = len(arrays[ref]) if np.ndim(arrays[ref]) else 0
    for name, arr in arrays.items():
        if np.ndim(arr) == 0 or len(arr) != n:
            raise IntegrityError(
                path,
                f"has {len(arr) if np.ndim(arr) else 'no'} rows, but {ref!r} has {n}",
                f"{prefix}{name}",
            )
        if name in specs:
            check_array(arr, specs[name], path, f"{prefix}{name}", n)
    return n


# --- content hashes -----------------------------------------------------------------------
class ArrayHasher:
    """Incremental :func:`array_sha256` of an array written in row blocks, in row order.

    Args:
        dtype, shape: of the whole array (the header that is hashed first).
    """

    def __init__(self, dtype: Any, shape: tuple[int, ...]):
        self.dtype = _canonical_dtype(np.dtype(dtype))
        self._h = hashlib.sha256(_header(self.dtype, tuple(shape)))

    def update(self, rows: np.ndarray) -> None:
        self._h.update(_bytes(np.asarray(rows), self.dtype))

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _canonical_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.kind in "OSUT":
        return np.dtype(object)
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    name = "str" if dtype.kind == "O" else dtype.str
    return f"{HASH_FORMAT}|{name}|{shape}\n".encode()


def _bytes(arr: np.ndarray, dtype: np.dtype) -> bytes | memoryview:
    if dtype.kind == "O":  # strings: length-prefixed utf-8
        parts = []
        for item in arr.ravel():
            b = item if isinstance(item, bytes) else str(item).encode()
            parts.append(len(b).to_bytes(8, "little") + b)
        return b"".join(parts)
    if arr.size == 0:
        return b""
    return memoryview(np.ascontiguousarray(arr, dtype)).cast("B")


def array_sha256(arr: np.ndarray) -> str:
    """sha256 (hex) of an array's dtype, shape and C-order little-endian bytes.

    Example:
        >>> a = np.arange(6, dtype=np.float32).reshape(2, 3)
        >>> array_sha256(a) == array_sha256(a.astype(">f4"))
        True
        >>> array_sha256(a) == array_sha256(a.reshape(3, 2))
        False
    """
    arr = np.asarray(arr)
    h = ArrayHasher(arr.dtype, arr.shape)
    h.update(arr)
    return h.hexdigest()


def verify_sha256(
    arrays: Mapping[str, np.ndarray],
    recorded: Mapping[str, str],
    path: str | Path,
    where: str | None = None,
) -> None:
    """Raise :class:`IntegrityError` unless every array's :func:`array_sha256` is recorded.

    ``recorded`` must cover exactly the arrays given (a missing or extra array is an error).
    """
    prefix = "" if where is None else f"{where}/"
    extra = sorted(set(arrays) - set(recorded))
    if extra:
        raise IntegrityError(path, f"arrays {extra} are not covered by the recorded hash", where)
    missing = sorted(set(recorded) - set(arrays))
    if missing:
        raise IntegrityError(path, f"arrays {missing} are recorded in the hash but absent", where)
    for name in sorted(arrays):
        got = array_sha256(arrays[name])
        if got != recorded[name]:
            raise IntegrityError(
                path,
                f"sha256 is {got[:16]}..., the store records {str(recorded[name])[:16]}... "
                "(data corrupted or modified)",
                f"{prefix}{name}",
            )


def read_json_attr(attrs: Mapping[str, Any], key: str, path: str | Path, where: str | None = None):
    """``json.loads`` of a string attribute, with a missing or broken one an IntegrityError."""
    if key not in attrs:
        raise IntegrityError(path, f"the attribute {key!r} is missing", where)
    value = attrs[key]
    try:
        return json.loads(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError) as err:
        raise IntegrityError(
            path, f"the attribute {key!r} is not valid JSON: {err}", where
        ) from err


def read_json_file(path: str | Path, what: str = "file") -> Any:
    """Parse a JSON file; a missing one is FileNotFoundError, a broken one IntegrityError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as err:
        raise IntegrityError(
            path, f"{what} is not valid JSON (truncated or corrupt?): {err}"
        ) from err


def open_hdf5(path: str | Path, what: str) -> h5py.File:
    """Open an HDF5 file read-only; missing: FileNotFoundError; unreadable: IntegrityError."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.is_dir():
        raise IntegrityError(path, f"is a directory, not a {what}")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        size = path.stat().st_size
        raise IntegrityError(
            path,
            f"cannot be read as an HDF5 {what} ({size} bytes; empty, truncated or corrupt?): {err}",
        ) from err


#: Exceptions h5py raises on reading damaged files (besides OSError).
READ_ERRORS = (OSError, KeyError, RuntimeError, TypeError, ValueError, UnicodeDecodeError)


# --- DeepLense .npy files -----------------------------------------------------------------
#: The only globals a DeepLense object-array pickle may refer to.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }
)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` admits only numpy's array, dtype and scalar constructors."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}")
        return super().find_class(module, name)


def read_npy(path: str | Path) -> tuple[np.ndarray, float]:
    """Image and axion mass from one DeepLense ``.npy`` file, never running code from it.

    A plain numeric array is an image (``(H, W)``, or ``(1, H, W)`` / ``(H, W, 1)``) with mass
    NaN. An object array must be exactly ``[2-D float image, float m_a]`` (the DeepLense axion
    files); its pickle is read by a restricted unpickler. Anything else (a pickle named
    ``.npy``, other objects, other globals) raises :class:`IntegrityError` naming the file.

    Returns:
        (H, W) float64 image and m_a in eV (NaN if absent).
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            try:
                version = np.lib.format.read_magic(fh)
                read_header = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                if read_header is None:
                    raise ValueError(f"unsupported .npy format version {version}")
                header = read_header(fh)  # parsed with ast.literal_eval: runs no code
            except ValueError as err:
                raise IntegrityError(
                    path, f"not a .npy file (a plain pickle or other data?): {err}"
                ) from err
            shape, fortran, dtype = header
            if not dtype.hasobject:
                fh.seek(0)
                arr = np.load(fh, allow_pickle=False)
                m_a = float("nan")
            else:
                try:
                    obj = _NumpyOnlyUnpickler(io.BytesIO(fh.read())).load()
                except Exception as err:  # noqa: BLE001 - any failure of a hostile pickle
                    raise IntegrityError(
                        path, f"object array refused (only [image, m_a] is allowed): {err}"
                    ) from err
                arr, m_a = _image_and_mass(obj, path)
    except OSError as err:
        raise IntegrityError(path, f"not a readable .npy file: {err}") from err
    if arr.dtype.kind not in "fiu":
        raise IntegrityError(path, f"image dtype is {arr.dtype}, expected a number type")
    img = np.asarray(arr, np.float64)
    img = img.squeeze() if img.ndim == 3 and 1 in (img.shape[0], img.shape[-1]) else img
    if img.ndim != 2:
        raise IntegrityError(path, f"expected a 2-D image, got shape {np.shape(arr)}")
    if not np.isfinite(img).all():
        raise IntegrityError(path, "image holds NaN or inf values")
    return img, m_a


def _image_and_mass(obj: Any, path: Path) -> tuple[np.ndarray, float]:
    """Check an unpickled object is exactly ``[2-D float image, float m_a]``."""
    if not isinstance(obj, np.ndarray) or obj.dtype != object or obj.shape != (2,):
        what = obj.shape if isinstance(obj, np.ndarray) else type(obj).__name__
        raise IntegrityError(path, f"object array is not [image, m_a] (got {what})")
    img, m_a = obj[0], obj[1]
    if not (isinstance(img, np.ndarray) and img.dtype.kind == "f" and img.ndim == 2):
        what = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise IntegrityError(path, f"object array item 0 must be a 2-D float image, got {what}")
    if isinstance(m_a, (bool, np.bool_)) or not isinstance(m_a, (float, np.floating)):
        raise IntegrityError(path, f"object array item 1 must be a float m_a, got {m_a!r}")
    if not (math.isfinite(float(m_a)) and m_a > 0):
        raise IntegrityError(path, f"axion mass m_a must be finite and > 0 eV, got {m_a!r}")
    return img, float(m_a)


# --- configuration mappings ---------------------------------------------------------------
def _type_name(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(
        type(value), "list" if isinstance(value, (list, tuple)) else type(value).__name__
    )


def _same_type(value: Any, default: Any) -> bool:
    """Whether ``value`` may replace ``default`` (an int where a float is expected is fine)."""
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def check_params(
    values: Mapping[str, Any], defaults: Mapping[str, Any], path: str | Path, section: str
) -> None:
    """Reject keys of ``values`` that ``defaults`` lacks, and values of another type.

    Any subset of keys is fine. Dicts are partial overrides: their keys are checked one level
    down (when the default dict is not empty). List elements are checked when the default's
    elements share one type.

    Example:
        >>> check_params({"N": 3, "LR": 1}, {"N": 1, "LR": 0.1, "NAME": "x"}, "p.yaml", "a")
        >>> check_params({"N": "lots"}, {"N": 1}, "p.yaml", "a")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        enflens.integrity.IntegrityError: p.yaml [a.N]: expected int (like the default 1), got ...
    """
    for key, value in values.items():
        where = f"{section}.{key}"
        if key not in defaults:
            known = ", ".join(sorted(map(str, defaults)))
            raise IntegrityError(path, f"unknown key {key!r} (known: {known})", where)
        _check_value(value, defaults[key], path, where, depth=1)


def _check_value(value: Any, default: Any, path: str | Path, where: str, depth: int) -> None:
    if not _same_type(value, default):
        raise IntegrityError(
            path,
            f"expected {_type_name(default)} (like the default {default!r}), "
            f"got {_type_name(value)} {value!r}",
            where,
        )
    if isinstance(default, dict) and default and depth > 0:
        for k, v in value.items():
            if k not in default:
                known = ", ".join(sorted(map(str, default)))
                raise IntegrityError(path, f"unknown key {k!r} (known: {known})", f"{where}.{k}")
            _check_value(v, default[k], path, f"{where}.{k}", depth - 1)
    elif isinstance(default, (list, tuple)) and default and value:
        types = {_type_name(d) for d in default}
        if len(types) == 1:
            for i, v in enumerate(value):
                if not _same_type(v, default[0]):
                    raise IntegrityError(
                        path,
                        f"element {i} is {_type_name(v)} {v!r}, expected {types.pop()}",
                        where,
                    )


__all__ = [
    "ArrayHasher",
    "ArraySpec",
    "HASH_ATTR",
    "HASH_FORMAT",
    "IntegrityError",
    "IntegrityWarning",
    "array_sha256",
    "check_array",
    "check_arrays",
    "check_params",
    "open_hdf5",
    "read_json_attr",
    "read_json_file",
    "read_npy",
    "verify_sha256",
]
