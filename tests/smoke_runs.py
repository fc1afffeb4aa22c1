"""The three smoke runs of ``tests/test_reproduce_smoke.py``, started in the background.

``tests/conftest.py`` starts them as soon as pytest has collected a smoke test, so that they run
alongside the unit tests (most of a smoke run, and of a unit test, is single-threaded XLA
compilation, so the three share a 2-core machine well), and moves the smoke tests to the end of
the session, where :func:`wait` collects what the runs wrote.

* Two fresh copies of the repository (the tracked and untracked, not ignored, files, as a fresh
  clone has) each run ``python -m enflens.study.pipeline run --profile smoke`` from scratch, at
  the same time, under each other's and the unit tests' load.
* Each fresh run has its own JAX compilation cache, filled as it goes (every executable, however
  quick its compile), so a later notebook loads what an earlier one compiled. An executable
  loaded from the cache is the one the compiler would have built: the numbers are unchanged.
* When the first run ends, its results are copied aside and the same copy runs again, from its
  stage caches and its compilation cache: the rerun.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from enflens.io import REPO_ROOT

#: The whole chain of one copy may take this long on a loaded 2-core machine before it is killed.
TIMEOUT_S = 3600


@dataclass
class Runs:
    base: Path
    procs: dict[str, subprocess.Popen]


_RUNS: Runs | None = None


def _copy_repo(dst: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT, check=True,
        capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, files):
        src = REPO_ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def _command(root: Path, snapshot: Path | None) -> list[str]:
    """One smoke run in ``root``; with ``snapshot``, copy its results there, then rerun."""
    run = [sys.executable, "-m", "enflens.study.pipeline", "run", "--profile", "smoke"]
    if snapshot is None:
        return run
    # a short Python driver rather than a shell line: the same on every platform CI might use
    driver = (
        "import shutil, subprocess, sys\n"
        f"run = {run!r}\n"
        "if subprocess.call(run): sys.exit('the first smoke run failed')\n"
        f"shutil.copytree({str(root / 'results' / 'smoke')!r}, {str(snapshot / 'results')!r})\n"
        f"shutil.copy2({str(root / 'runs' / 'smoke' / 'timings.json')!r}, "
        f"{str(snapshot / 'timings.json')!r})\n"
        "print('[rerun] from the cache', flush=True)\n"
        "sys.exit(subprocess.call(run))\n"
    )
    return [sys.executable, "-c", driver]


def start() -> Runs:
    """Copy the repository twice and start both chains; idempotent within a session."""
    global _RUNS
    if _RUNS is not None:
        return _RUNS
    base = Path(tempfile.mkdtemp(prefix="enflens-smoke-"))
    procs = {}
    for name in ("first", "second"):
        root = _copy_repo(base / name)
        cache = base / f"jax_cache_{name}"
        snapshot = base / "first_results" if name == "first" else None
        env = {**os.environ, "PYTHONPATH": str(root / "lib"), "MPLBACKEND": "Agg",
               "JAX_COMPILATION_CACHE_DIR": str(cache),
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
               "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}  # fmt: skip
        env.pop("XLA_FLAGS", None)  # one device, as `make reproduce` has on CI
        # a log file, not a pipe that could fill and block; a process session of its own, so
        # that stop() kills the chain's notebook kernels too
        with (base / f"{name}.log").open("w") as log:
            procs[name] = subprocess.Popen(
                _command(root, snapshot), cwd=root, env=env, stdout=log,
                stderr=subprocess.STDOUT, text=True, start_new_session=True,
            )  # fmt: skip
    _RUNS = Runs(base, procs)
    return _RUNS


def _read(results: Path, timings: Path) -> dict[str, dict]:
    found = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}
    assert found, f"the smoke run wrote no results under {results}"
    return {"results": found, "timings": json.loads(timings.read_text())}


def wait() -> tuple[dict, dict, dict]:
    """Wait for both chains; return the first fresh run's, the second's and the rerun's output."""
    runs = start()
    for name, proc in runs.procs.items():
        try:
            code = proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            stop()
            raise
        log = (runs.base / f"{name}.log").read_text()
        assert code == 0, f"the {name} smoke chain in {runs.base / name} failed:\n{log[-4000:]}"
    snapshot = runs.base / "first_results"
    first = _read(snapshot / "results", snapshot / "timings.json")
    second, rerun = (_read(runs.base / name / "results" / "smoke",
                           runs.base / name / "runs" / "smoke" / "timings.json")
                     for name in ("second", "first"))  # fmt: skip
    return first, second, rerun


def stop(remove: bool = False) -> None:
    """Kill any chain still running (a failed or interrupted session); optionally remove files."""
    global _RUNS
    if _RUNS is None:
        return
    for proc in _RUNS.procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if remove:
        shutil.rmtree(_RUNS.base, ignore_errors=True)
    _RUNS = None
