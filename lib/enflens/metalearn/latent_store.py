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
           free-form attributes (image_shape, inner_steps, ...; JSON-encoded).

Files are written atomically (:func:`enflens.io.atomic_path`). :func:`read_latent_store` can
check that the store was made by a given decoder (``expected_hash``) and raises a ValueError
naming the file otherwise.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from enflens.geometry import Latents
from enflens.io import _to_jsonable, atomic_path

FORMAT_VERSION = 1
_LATENT_FIELDS = ("positions", "orientations", "contexts", "windows")


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
    """
    path = Path(path)
    arrays = _latent_dict(latents)
    labels = np.asarray(labels)
    psnr = np.asarray(psnr, np.float32)
    n = len(labels)
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
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            g = f.create_group("latents")
            for name, arr in arrays.items():
                g.create_dataset(name, data=arr)
            f.create_dataset("labels", data=labels.astype(np.int64))
            f.create_dataset("psnr", data=psnr)
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["kind"] = kind
            f.attrs["model_config"] = json.dumps(_to_jsonable(model_config), sort_keys=True)
            f.attrs["decoder_path"] = str(decoder_path)
            f.attrs["decoder_hash"] = str(decoder_hash)
            f.attrs["extra"] = json.dumps(_to_jsonable(attrs or {}), sort_keys=True)
    return path


def read_latent_store(
    path: str | Path, *, expected_hash: str | None = None, expected_kind: str | None = None
) -> LatentStore:
    """Read a latent store.

    Args:
        path: the HDF5 file.
        expected_hash: if given, the store must come from the decoder with this content hash.
        expected_kind: if given, the model kind must match ("enf"/"cnf").

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a latent store, or decoder hash / kind mismatch (the message names the
            file and both values).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_latent_store: {path} not found")
    with h5py.File(path, "r") as f:
        if "latents" not in f or "format_version" not in f.attrs:
            raise ValueError(f"read_latent_store: {path} is not a latent store")
        arrays = {k: np.asarray(v) for k, v in f["latents"].items()}
        labels = np.asarray(f["labels"])
        psnr = np.asarray(f["psnr"])
        kind = str(f.attrs["kind"])
        model_config = json.loads(f.attrs["model_config"])
        decoder_path = str(f.attrs["decoder_path"])
        decoder_hash = str(f.attrs["decoder_hash"])
        extra = json.loads(f.attrs["extra"])
    if expected_hash is not None and decoder_hash != expected_hash:
        raise ValueError(
            f"read_latent_store: {path} was fitted with decoder {decoder_path} (hash "
            f"{decoder_hash}), not with the expected decoder hash {expected_hash}; re-encode"
        )
    if expected_kind is not None and kind != expected_kind:
        raise ValueError(f"read_latent_store: {path} holds {kind!r} latents, not {expected_kind!r}")
    if set(arrays) == set(_LATENT_FIELDS):
        latents: Any = Latents(**arrays)
    elif set(arrays) == {"z"}:
        latents = arrays["z"]
    else:
        latents = arrays
    return LatentStore(
        latents=latents,
        labels=labels,
        psnr=psnr,
        kind=kind,
        model_config=model_config,
        decoder_path=decoder_path,
        decoder_hash=decoder_hash,
        attrs=extra,
        path=path,
    )
