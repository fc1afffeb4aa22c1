"""Content-addressed cache for the study's expensive stages.

Each stage (dataset, decoder checkpoint, latent store, classifier checkpoint) is stored at a path
whose name carries a hash of the parameters that produce it, e.g. ``data/model_ii-3f2a9c1b.h5``.
A rerun with the same parameters finds the file and skips the work; a change of any parameter
(including an upstream stage's hash, which callers include in ``params``) gives a new path and
recomputes. A sidecar ``<path>.params.json`` records the parameters for humans; a stage may also
record the wall time it took in ``<path>.seconds.json`` (a timing, never part of a key), so that
a run which reuses the output can still report what producing it cost.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from enflens.io import _to_jsonable, repo_path, write_json


def param_hash(params: dict[str, Any], length: int = 10) -> str:
    """Stable short hash of a JSON-serialisable parameter dict (key order does not matter)."""
    blob = json.dumps(_to_jsonable(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def stage_path(folder: str, name: str, params: dict[str, Any], suffix: str = "") -> Path:
    """Path ``<repo>/<folder>/<name>-<hash(params)><suffix>`` for a cached stage."""
    return repo_path(folder, f"{name}-{param_hash(params)}{suffix}")


def record_params(path: str | Path, params: dict[str, Any]) -> Path:
    """Write the parameters that produced ``path`` to ``<path>.params.json``."""
    path = Path(path)
    return write_json(path.with_name(path.name + ".params.json"), params)


def is_cached(path: str | Path) -> bool:
    """True when the stage output exists and its parameter record was written after it.

    An output replaced after its record (newer modification time) is not cached: the record
    may describe the file it replaced.
    """
    path = Path(path)
    side = path.with_name(path.name + ".params.json")
    if not (path.exists() and side.exists()):
        return False
    return side.stat().st_mtime_ns >= _mtime_ns(path)


def _mtime_ns(path: Path) -> int:
    """Latest modification time of a file, or of anything inside a directory (checkpoints)."""
    if path.is_file():
        return path.stat().st_mtime_ns
    return max([path.stat().st_mtime_ns, *(p.stat().st_mtime_ns for p in path.rglob("*"))])


def record_seconds(path: str | Path, seconds: float) -> Path:
    """Write the wall time that produced ``path`` to ``<path>.seconds.json``.

    Call it before :func:`record_params`, which marks the output complete.
    """
    path = Path(path)
    return write_json(path.with_name(path.name + ".seconds.json"), {"seconds": float(seconds)})


def recorded_seconds(path: str | Path) -> float | None:
    """The wall time recorded by :func:`record_seconds` for ``path``; None if none was recorded.

    Raises:
        ValueError: the record exists but is not ``{"seconds": <number>}``.
    """
    path = Path(path)
    side = path.with_name(path.name + ".seconds.json")
    if not side.exists():
        return None
    try:
        value = json.loads(side.read_text())["seconds"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{side}: not a timing record {{\"seconds\": <number>}} ({e})") from e
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{side}: 'seconds' must be a number, got {value!r}")
    return float(value)


def forget(path: str | Path) -> None:
    """Remove the parameter record of ``path``, so :func:`is_cached` is false until re-recorded.

    Called before a stage output is replaced (e.g. ``generate --force``).
    """
    path = Path(path)
    for record in (".params.json", ".seconds.json"):
        path.with_name(path.name + record).unlink(missing_ok=True)
