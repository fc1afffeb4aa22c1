"""Atomic file writes (nothing is ever left half-written) and paths inside the repository.

Every file the project produces (HDF5 stores, JSON results, figures, checkpoints metadata) is
written to a temporary file in the destination folder and renamed into place, so an interrupted
run leaves either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Repository root (``lib/enflens/io.py`` -> two levels up from ``lib``).
REPO_ROOT = Path(__file__).resolve().parents[2]


def repo_path(*parts: str) -> Path:
    """Absolute path inside the repository (independent of the notebook's working directory)."""
    return REPO_ROOT.joinpath(*parts)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file is removed if the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _to_jsonable(obj: Any) -> Any:
    """Convert numpy / jax scalars and arrays to plain Python for ``json``."""
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy / jax arrays and scalars
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically; numpy/jax values are converted."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_to_jsonable(data), indent=2, sort_keys=True) + "\n")
    return Path(path)
