"""Latent stores: the fitted latents of a dataset split in one HDF5 file.

Layout (n images)::

    /latents/positions     (n, N, 2)  float32   ENF: latent positions in [-1, 1]^2
    /latents/orientations  (n, N)     float32   ENF: radians
    /latents/contexts      (n, N, D)  float32   ENF
    /latents/windows       (n, N)     float32   ENF: Gaussian window widths
    /latents/z             (n, d)     float32   CNF: the global latent vector
    /labels                (n,)       int64
    /psnr                  (n,)       float32   reconstruction PSNR (dB) after the inner loop
    attrs: kind, model_config (JSON), decoder_path, decoder_hash, format_version, plus
           free-form attributes (image_shape, inner_steps, ...; JSON-encoded), and
           content_sha256 (JSON {array: sha256} of latents/*, labels and psnr; format 2).

Files are written atomically (:func:`enflens.io.atomic_path`). :func:`read_latent_store` checks
every array (float latents of consistent shapes, finite; labels in [0, 3); PSNR not NaN; row
counts that agree), the content hash (by default), and optionally that the store was made by a
given decoder (``expected_hash``). Every problem raises :class:`enflens.integrity.IntegrityError`
(a ValueError) naming the file, the array and the problem. Stores of format 1 (no content hash)
load with an :class:`enflens.integrity.IntegrityWarning`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from enflens.data.lensing import CLASS_NAMES
from enflens.geometry import Latents
from enflens.integrity import (
    HASH_ATTR,
    READ_ERRORS,
    ArraySpec,
    IntegrityError,
    array_sha256,
    check_arrays,
    open_hdf5,
    read_json_attr,
    verify_sha256,
    warn,
)
from enflens.io import _to_jsonable, atomic_path

#: 2: content_sha256 of every array. 1 (still read): no content hash.
FORMAT_VERSION = 2
_LATENT_FIELDS = ("positions", "orientations", "contexts", "windows")
_ATTRS = ("kind", "model_config", "decoder_path", "decoder_hash", "extra")


def _specs(arrays: dict[str, np.ndarray]) -> dict[str, ArraySpec]:
    """Specs of a store's arrays (names ``latents/<field>``, ``labels``, ``psnr``)."""
    specs = {
        "labels": ArraySpec("iu", low=0, high=len(CLASS_NAMES), high_open=True),
        "psnr": ArraySpec("f", inf_ok=True),
    }
    fields = {k.removeprefix("latents/") for k in arrays if k.startswith("latents/")}
    if fields == set(_LATENT_FIELDS):
        n_lat = np.shape(arrays["latents/positions"])[1:2] or (None,)
        d = np.shape(arrays["latents/contexts"])[2:3] or (None,)
        tails = {
            "positions": (*n_lat, 2),
            "orientations": n_lat,
            "contexts": (*n_lat, *d),
            "windows": n_lat,
        }
        specs.update({f"latents/{k}": ArraySpec("f", t) for k, t in tails.items()})
    elif fields == {"z"}:
        specs["latents/z"] = ArraySpec("f", (None,))
    else:
        specs.update({f"latents/{k}": ArraySpec("f", tail=None) for k in fields})
    return specs


@dataclasses.dataclass
class LatentStore:
    """Contents of a latent store.

    Attributes:
        latents: :class:`enflens.geometry.Latents` (numpy, leading dim n) for the ENF, or a
            (n, d) array for the CNF.
        labels: (n,) class labels.
        psnr: (n,) reconstruction PSNR in dB.
        kind: model kind ("enf", "cnf").
        model_config: the decoder's config dict.
        decoder_path: checkpoint the latents were fitted with; decoder_hash: its content hash.
        attrs: other attributes (image_shape, inner_steps, ...).
        path: the file read.
    """

    latents: Any
    labels: np.ndarray
    psnr: np.ndarray
    kind: str
    model_config: dict
    decoder_path: str
    decoder_hash: str
    attrs: dict
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.labels)


def _latent_dict(latents: Any) -> dict[str, np.ndarray]:
    if isinstance(latents, Latents):
        return {f: np.asarray(getattr(latents, f), np.float32) for f in _LATENT_FIELDS}
    if isinstance(latents, dict):
        return {str(k): np.asarray(v, np.float32) for k, v in latents.items()}
    return {"z": np.asarray(latents, np.float32)}


def write_latent_store(
    path: str | Path,
    *,
    latents: Any,
    labels: Any,
    psnr: Any,
    kind: str,
    model_config: dict,
    decoder_path: str,
    decoder_hash: str,
    attrs: dict | None = None,
) -> Path:
    """Write a latent store atomically (see the module docstring for the layout).

    Args:
        latents: ENF :class:`Latents` with leading dim n, a CNF (n, d) array, or a dict of
            arrays with leading dim n.
        labels: (n,) ints; psnr: (n,) dB.
        kind, model_config, decoder_path, decoder_hash: provenance of the latents.
        attrs: extra JSON-serialisable attributes.

    Returns:
        The written path.

    Raises:
        ValueError: inconsistent lengths; IntegrityError: arrays a reader would refuse (NaN
            latents, labels out of range), so a bad store is never written.
    """
    path = Path(path)
    arrays = _latent_dict(latents)
    labels = np.asarray(labels)
    psnr = np.asarray(psnr, np.float32)
    n = len(labels) if labels.ndim else 0
    if labels.shape != (n,) or psnr.shape != (n,):
        raise ValueError(
            f"write_latent_store({path}): labels {labels.shape} and psnr {psnr.shape} must both "
            "be (n,)"
        )
    for name, arr in arrays.items():
        if arr.shape[:1] != (n,):
            raise ValueError(
                f"write_latent_store({path}): latents/{name} has shape {arr.shape}, "
                f"expected leading dimension {n}"
            )
    flat = {f"latents/{k}": v for k, v in arrays.items()}
    flat.update(labels=labels.astype(np.int64), psnr=psnr)
    check_arrays(flat, _specs(flat), path, rows_from="labels")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name, arr in flat.items():
                f.create_dataset(name, data=arr)
            f.attrs[HASH_ATTR] = json.dumps(
                {k: array_sha256(v) for k, v in flat.items()}, sort_keys=True
            )
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["kind"] = kind
            f.attrs["model_config"] = json.dumps(_to_jsonable(model_config), sort_keys=True)
            f.attrs["decoder_path"] = str(decoder_path)
            f.attrs["decoder_hash"] = str(decoder_hash)
            f.attrs["extra"] = json.dumps(_to_jsonable(attrs or {}), sort_keys=True)
    return path


def read_latent_store(
    path: str | Path,
    *,
    expected_hash: str | None = None,
    expected_kind: str | None = None,
    verify: bool = True,
) -> LatentStore:
    """Read and check a latent store.

    Args:
        path: the HDF5 file.
        expected_hash: if given, the store must come from the decoder with this content hash.
        expected_kind: if given, the model kind must match ("enf"/"cnf").
        verify: compare every array's sha256 with the one recorded at writing (format 2).

    Raises:
        FileNotFoundError: no such file.
        IntegrityError (a ValueError): unreadable (empty, truncated, random) file, not a latent
            store, missing array or attribute, latents of the wrong dtype/shape or non-finite,
            labels out of range, NaN PSNR, row counts that differ, hash mismatch, decoder hash
            or kind mismatch. The message names the file, the array and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"read_latent_store: {path} not found")
    with open_hdf5(path, "latent store") as f:
        name = None
        try:
            if not isinstance(f.get("latents"), h5py.Group) or "format_version" not in f.attrs:
                raise IntegrityError(path, "not a latent store (no latents group / format_version)")
            attrs = {k: v for k, v in f.attrs.items()}
            arrays = {}
            for name in ("labels", "psnr", *(f"latents/{k}" for k in f["latents"])):
                if name not in f:
                    raise IntegrityError(path, "the array is missing", name)
                arrays[name] = np.asarray(f[name])
        except IntegrityError:
            raise
        except READ_ERRORS as err:
            raise IntegrityError(
                path, f"reading failed (truncated or corrupt?): {err}", name
            ) from err
    version = int(attrs["format_version"])
    if version > FORMAT_VERSION:
        raise IntegrityError(
            path, f"format_version {version} is newer than this code reads ({FORMAT_VERSION})"
        )
    missing = [k for k in _ATTRS if k not in attrs]
    if missing:
        raise IntegrityError(path, f"attributes {missing} are missing")
    kind = _str(attrs["kind"])
    model_config = read_json_attr(attrs, "model_config", path)
    decoder_path = _str(attrs["decoder_path"])
    decoder_hash = _str(attrs["decoder_hash"])
    extra = read_json_attr(attrs, "extra", path)
    check_arrays(arrays, _specs(arrays), path, rows_from="labels")
    if verify and version >= 2:
        recorded = read_json_attr(attrs, HASH_ATTR, path)
        if not isinstance(recorded, dict):
            raise IntegrityError(path, f"the attribute {HASH_ATTR!r} is not a mapping")
        verify_sha256(arrays, recorded, path)
    elif verify:
        warn(path, "format_version 1 store has no content hash: values checked, not verified "
             "(re-encode to cover them)")  # fmt: skip
    if expected_hash is not None and decoder_hash != expected_hash:
        raise IntegrityError(
            path,
            f"was fitted with decoder {decoder_path} (hash {decoder_hash}), not with the "
            f"expected decoder hash {expected_hash}; re-encode",
        )
    if expected_kind is not None and kind != expected_kind:
        raise IntegrityError(path, f"holds {kind!r} latents, not {expected_kind!r}")
    fields = {k.removeprefix("latents/"): v for k, v in arrays.items() if "/" in k}
    if set(fields) == set(_LATENT_FIELDS):
        latents: Any = Latents(**fields)
    elif set(fields) == {"z"}:
        latents = fields["z"]
    else:
        latents = fields
    return LatentStore(
        latents=latents,
        labels=arrays["labels"],
        psnr=arrays["psnr"],
        kind=kind,
        model_config=model_config,
        decoder_path=decoder_path,
        decoder_hash=decoder_hash,
        attrs=extra,
        path=path,
    )


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
