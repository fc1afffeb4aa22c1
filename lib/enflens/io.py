"""Atomic file writes (nothing is ever left half-written) and paths inside the repository.

Every file the project produces (HDF5 stores, JSON results, figures, checkpoints metadata) is
written to a temporary file in the destination folder and renamed into place, so an interrupted
run leaves either the old file or the new one, never a truncated one. The temporary file is named
``.<name>.<pid>.<random>.tmp``; it is removed when the block raises, when the process gets SIGTERM
(turned into ``SystemExit`` while the block runs), and, after a SIGKILL, by the next
:func:`atomic_path` for the same destination (the writing process is gone).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Repository root (``lib/enflens/io.py`` -> two levels up from ``lib``).
REPO_ROOT = Path(__file__).resolve().parents[2]


def repo_path(*parts: str) -> Path:
    """Absolute path inside the repository (independent of the notebook's working directory)."""
    return REPO_ROOT.joinpath(*parts)


#: Temporary files of older versions (``.<name>.<random>.tmp``, no pid) count as stale after this.
_LEGACY_TMP_AGE_S = 600


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files :func:`atomic_path` left beside ``path`` by dead processes.

    Only files of our own naming are touched: ``.<name>.<pid>.<random>.tmp`` whose process no
    longer runs, and ``.<name>.<random>.tmp`` (older versions) not modified for 10 minutes.
    Returns the removed paths.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    ours = re.compile(rf"^\.{re.escape(path.name)}\.(?:(\d+)\.)?[A-Za-z0-9_]+\.tmp$")
    removed = []
    for p in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        m = ours.match(p.name)
        if m is None or not p.is_file():
            continue
        if m.group(1) is not None:
            stale = int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1)))
        else:
            stale = time.time() - p.stat().st_mtime > _LEGACY_TMP_AGE_S
        if stale:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def glob_escape(name: str) -> str:
    """Escape glob metacharacters of a file name (``[``, ``*``, ``?``)."""
    return re.sub(r"([\[\]*?])", r"[\1]", name)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While active (main thread only), SIGTERM raises ``SystemExit(143)`` so cleanups run.

    A handler someone else installed is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        yield
        return

    def _raise(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file is removed if the block raises or the process gets SIGTERM; stale ones
    of killed runs are removed first (:func:`remove_stale_temps`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    with sigterm_raises():
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
        )
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


def check_output(path: str | os.PathLike, force: bool = False) -> Path:
    """Check, before any work, that ``path`` can be written as a new output file.

    Raises:
        IsADirectoryError: ``path`` is a directory.
        FileExistsError: ``path`` exists and ``force`` is false.
        PermissionError / NotADirectoryError: its folder cannot be created or written.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"output {path} is a directory; give a file name")
    if path.exists() and not force:
        raise FileExistsError(
            f"output {path} already exists; pass --force (force=True) to replace it"
        )
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"output {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"output {path}: folder {parent} is not writable")
    return path


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
