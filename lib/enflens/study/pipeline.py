"""Run the study's notebooks in order through papermill: ``python -m enflens.study.pipeline run``.

Each notebook ``notebooks/NN_name.py`` (the jupytext percent source) is converted to a notebook,
executed by papermill with the parameters of the chosen profile (``profiles/<profile>.yaml``:
its ``common`` section plus the notebook's own section), and written executed to
``runs/<profile>/NN_name.ipynb`` with a log ``runs/<profile>/NN_name.log``. The wall time of each
notebook goes to ``runs/<profile>/timings.json``. On failure the notebook and cell are named and
the process exits non-zero. With ``--publish`` the executed notebooks (outputs compacted) replace
the committed ``notebooks/NN_name.ipynb`` twins, so a reader on a code host sees a real run.

Every notebook runs on all local devices (:mod:`enflens.parallel`). For a multi-process run
(several hosts or one process per GPU), start the same command in every process with
``--num-processes N --process-id I --coordinator HOST:PORT``, or with ``--distributed`` to let
``jax.distributed`` read the cluster's variables (SLURM ``srun``, Open MPI). The settings reach
each notebook's kernel through the ``ENFLENS_*`` variables of :mod:`enflens.parallel`, and a first
cell (tagged :data:`DISTRIBUTED_TAG`, never published) starts ``jax.distributed`` before anything
else. Process 0 writes the stages' files; process I > 0 writes its executed notebooks to
``runs/<profile>/process<I>/``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from enflens import parallel
from enflens.integrity import IntegrityError, check_params
from enflens.io import atomic_path, repo_path, write_json
from enflens.study.results import PROFILE_ENV

KERNEL_NAME = "enflens"
#: full_check: the CPU rehearsal of bench/gpu_full.sh (the full profile's keys, smoke sizes)
PROFILES = ("smoke", "cpu", "full", "full_check")
_NOTEBOOK_RE = re.compile(r"^(\d\d)_[a-z0-9_]+\.py$")
#: Tag of the first cell that starts ``jax.distributed`` in a multi-process run.
DISTRIBUTED_TAG = "enflens-distributed"
_RANK_VARS = ("SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


class PipelineError(RuntimeError):
    """A notebook of the pipeline failed; the message names the notebook and the cell."""


def notebook_sources(folder: Path | None = None) -> list[Path]:
    """The jupytext sources ``NN_name.py`` in ``notebooks/``, in order."""
    folder = folder or repo_path("notebooks")
    return sorted(p for p in folder.glob("*.py") if _NOTEBOOK_RE.match(p.name))


def load_profile(
    profile: str, folder: Path | None = None, notebooks: Path | None = None
) -> dict[str, dict[str, Any]]:
    """Read and validate ``profiles/<profile>.yaml`` -> {section: {PARAM: value}}.

    The file has a ``common`` section and one section per notebook; every key and value type
    is checked against the notebooks' ``parameters`` cells (:func:`validate_profile`).

    Args:
        profile: the profile name; folder: where the profiles are (default ``profiles/``);
        notebooks: where the notebook sources are (default ``notebooks/``).

    Raises:
        FileNotFoundError: no such profile. ValueError: not YAML or no ``common`` section;
        IntegrityError (a ValueError): unknown section or key, or a value of the wrong type
        (the message names the file, the section and the key).
    """
    path = (folder or repo_path("profiles")) / f"{profile}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise FileNotFoundError(f"profile {profile!r}: {path} does not exist (known: {known})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"profile file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("common"), dict):
        raise ValueError(f"profile file {path} must be a mapping with a 'common:' section")
    for key, section in data.items():
        if not isinstance(section, dict):
            raise ValueError(f"profile file {path}: section {key!r} must be a mapping")
    if data["common"].get("PROFILE") != profile:
        raise ValueError(f"profile file {path}: common.PROFILE must be {profile!r}")
    validate_profile(data, path, notebooks)
    return data


def validate_profile(
    data: dict[str, dict[str, Any]], path: Path, notebooks: Path | None = None
) -> None:
    """Check a profile's sections and keys against the notebooks' ``parameters`` cells.

    Sections must be ``common`` or a notebook stem; ``common`` keys must be parameters of every
    notebook, a section's keys parameters of its notebook. Any subset of keys is fine (a
    profile overrides the defaults). Types must match the defaults (an int for a float is
    fine; dicts are checked one level down, see :func:`enflens.integrity.check_params`).

    Raises:
        IntegrityError: naming ``path``, the section and the key.
    """
    defaults = {s.stem: _defaults(s, s.stat().st_mtime_ns) for s in notebook_sources(notebooks)}
    if not defaults:
        raise FileNotFoundError(f"validate_profile: no notebook sources in {notebooks}")
    for section, values in data.items():
        if section == "common":
            for stem, params in defaults.items():
                try:
                    check_params(values, params, path, "common")
                except IntegrityError as err:
                    raise IntegrityError(
                        path, f"{err.problem} [in the parameters cell of {stem}]", err.where
                    ) from None
        elif section in defaults:
            check_params(values, defaults[section], path, section)
        else:
            known = ", ".join(["common", *defaults])
            raise IntegrityError(path, f"unknown section {section!r} (known: {known})", section)


@functools.lru_cache(maxsize=32)
def _defaults(source: Path, mtime_ns: int) -> dict[str, Any]:
    return parameter_defaults(source)


def notebook_parameters(profile: str, notebook: str) -> dict[str, Any]:
    """Parameters papermill injects into ``notebook`` (stem, e.g. ``03_meta_learning``).

    The notebook's ``parameters`` cell holds the one default of every value (the ``cpu``
    study); a profile holds only what differs: its ``common`` section and the notebook's own
    section, in that order. A dict-valued parameter is overridden key by key (one level), so
    ``META: {num_steps: 40}`` changes one Meta-SGD setting and keeps the others.
    """
    data = load_profile(profile)
    overrides = {**data["common"], **data.get(notebook, {})}
    source = repo_path("notebooks", f"{notebook}.py")
    defaults = parameter_defaults(source) if source.exists() else {}
    return {k: merge_override(defaults.get(k), v) for k, v in overrides.items()}


def merge_override(default: Any, value: Any) -> Any:
    """``value`` with, for two dicts, the default's keys that ``value`` does not set.

    >>> merge_override({"a": 1, "b": 2}, {"b": 3})
    {'a': 1, 'b': 3}
    >>> merge_override(5, 6)
    6
    """
    if isinstance(default, dict) and isinstance(value, dict):
        return {**default, **value}
    return value


def to_notebook(source: Path):
    """Read a jupytext ``.py`` source into an nbformat notebook with the enflens kernel."""
    import jupytext

    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {
        "name": KERNEL_NAME,
        "display_name": "Python (enflens)",
        "language": "python",
    }
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise PipelineError(
            f"{source}: expected exactly one cell tagged 'parameters', found {len(tagged)}"
        )
    return nb


def compact_outputs(nb, max_chars: int = 4000):
    """Shrink stream outputs for publication: keep the final state of ``\\r`` progress bars and
    cut very long streams. Returns a modified copy."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") != "stream":
                continue
            lines = [ln.rsplit("\r", 1)[-1] for ln in out["text"].split("\n")]
            text = "\n".join(ln for i, ln in enumerate(lines) if ln or i == len(lines) - 1)
            if len(text) > max_chars:
                text = (
                    text[: max_chars // 2]
                    + "\n[... output shortened ...]\n"
                    + text[-max_chars // 2 :]
                )
            out["text"] = text
        cell.get("metadata", {}).pop("papermill", None)
        cell.get("metadata", {}).pop("execution", None)
    return nb


def _first_error(nb) -> tuple[int, str]:
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return i, f"{out.get('ename')}: {out.get('evalue')}"
    return -1, "unknown error"


def run_notebook(
    source: Path, profile: str, out_dir: Path, kernel_name: str = KERNEL_NAME
) -> float:
    """Execute one notebook with the profile's parameters; return its wall time in seconds."""
    import nbformat
    import papermill as pm

    name = source.stem
    params = notebook_parameters(profile, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    in_path = out_dir / f".{name}.input.ipynb"
    nb = to_notebook(source)
    if os.environ.get(parallel.ENV_NUM_PROCESSES) or os.environ.get(parallel.ENV_DISTRIBUTED):
        cell = nbformat.v4.new_code_cell(
            "from enflens import parallel\n\nparallel.initialize_from_env()",
            metadata={"tags": [DISTRIBUTED_TAG]},
        )
        nb.cells.insert(0, cell)
    nbformat.write(nb, in_path)
    out_path, log_path = out_dir / f"{name}.ipynb", out_dir / f"{name}.log"
    start = time.perf_counter()
    os.environ[PROFILE_ENV] = profile  # inherited by the kernel: where figures go
    with open(log_path, "w") as log:
        try:
            pm.execute_notebook(
                str(in_path),
                str(out_path),
                parameters=params,
                kernel_name=kernel_name,
                cwd=str(source.parent),
                progress_bar=False,
                log_output=True,
                stdout_file=log,
                stderr_file=log,
            )
        except pm.PapermillExecutionError as err:
            raise PipelineError(
                f"notebook {source.name} failed in cell {err.cell_index} "
                f"(execution count {err.exec_count}): {err.ename}: {err.evalue}\n"
                f"  executed copy: {out_path}\n  log: {log_path}"
            ) from None
        except Exception as err:  # kernel died, timeout, ...
            cell = "?"
            if out_path.exists():
                cell = str(_first_error(nbformat.read(out_path, as_version=4))[0])
            raise PipelineError(
                f"notebook {source.name} failed (cell {cell}): {type(err).__name__}: {err}\n"
                f"  log: {log_path}"
            ) from None
        finally:
            in_path.unlink(missing_ok=True)
    return time.perf_counter() - start


def parameter_defaults(source: Path) -> dict[str, Any]:
    """The values the ``parameters`` cell of a notebook source assigns (executed in isolation)."""
    nb = to_notebook(source)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    namespace: dict[str, Any] = {}
    exec(compile(cell.source, f"{source.name}:parameters", "exec"), namespace)  # noqa: S102
    return {k: v for k, v in namespace.items() if k.isupper()}


def publish(executed: Path, twin: Path) -> None:
    """Replace the committed ``.ipynb`` twin by the executed notebook (outputs compacted)."""
    import nbformat

    nb = compact_outputs(nbformat.read(executed, as_version=4))
    nb.metadata.pop("papermill", None)
    # The cpu profile's values equal the parameters cell's defaults (a test checks it), so
    # papermill's injected cell is redundant; dropping it keeps the twin's code equal to the .py.
    drop = {"injected-parameters", DISTRIBUTED_TAG}
    nb.cells = [c for c in nb.cells if not drop & set(c.metadata.get("tags", []))]
    source = twin.with_suffix(".py")
    if source.exists():  # show the source's parameters cell: the values that were injected
        (src_cell,) = [
            c for c in to_notebook(source).cells if "parameters" in c.metadata.get("tags", [])
        ]
        for cell in nb.cells:
            if "parameters" in cell.metadata.get("tags", []):
                cell.source = src_cell.source
    with atomic_path(twin) as tmp:
        nbformat.write(nb, tmp)


def distributed_env(
    num_processes: int | None = None,
    process_id: int | None = None,
    coordinator: str | None = None,
    auto: bool = False,
) -> dict[str, str]:
    """The ``ENFLENS_*`` variables of a multi-process run (empty for a single process).

    >>> distributed_env(2, 1, "node0:1234")[parallel.ENV_PROCESS_ID]
    '1'
    >>> distributed_env()
    {}

    Raises:
        ValueError: naming the flag that is missing or out of range.
    """
    if auto:
        if num_processes is not None or process_id is not None or coordinator is not None:
            raise ValueError("--distributed detects the cluster: drop --num-processes, "
                             "--process-id and --coordinator, or drop --distributed")  # fmt: skip
        return {parallel.ENV_DISTRIBUTED: "auto"}
    if num_processes is None or num_processes == 1:
        if process_id not in (None, 0) or coordinator is not None:
            raise ValueError("--process-id and --coordinator need --num-processes N > 1")
        return {}
    if num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {num_processes}")
    if process_id is None or not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    if not coordinator or ":" not in coordinator:
        raise ValueError(f"--coordinator must be HOST:PORT of process 0, got {coordinator!r}")
    return {
        parallel.ENV_NUM_PROCESSES: str(num_processes),
        parallel.ENV_PROCESS_ID: str(process_id),
        parallel.ENV_COORDINATOR: coordinator,
    }


def _process_id(env: dict[str, str]) -> int:
    """This process's index for the output folder (0 when it is not known before JAX)."""
    if parallel.ENV_PROCESS_ID in env:
        return int(env[parallel.ENV_PROCESS_ID])
    if not env:  # a single-process run
        return 0
    ranks = [os.environ[v] for v in _RANK_VARS if os.environ.get(v, "").isdigit()]
    return int(ranks[0]) if ranks else 0


def run(
    profile: str,
    only: list[str] | None = None,
    publish_twins: bool = False,
    distributed: dict[str, str] | None = None,
) -> dict[str, float]:
    """Run the notebooks (all, or those whose name starts with one of ``only``) in order.

    ``distributed``: :func:`distributed_env` of a multi-process run (set for the kernels).
    """
    if profile not in PROFILES:
        raise ValueError(f"--profile must be one of {PROFILES}, got {profile!r}")
    load_profile(profile)  # validate before spending time
    distributed = distributed or {}
    os.environ.update(distributed)
    rank = _process_id(distributed)
    if publish_twins and rank:
        publish_twins = False  # process 0 publishes
    sources = notebook_sources()
    if only:
        sources = [s for s in sources if any(s.stem.startswith(o) for o in only)]
        if not sources:
            raise ValueError(f"no notebook in notebooks/ matches {only}")
    out_dir = repo_path("runs", profile)
    if rank:
        out_dir = out_dir / f"process{rank}"
    timings_path = out_dir / "timings.json"
    timings: dict[str, float] = {}
    if timings_path.exists():
        timings = json.loads(timings_path.read_text())
    for source in sources:
        print(f"[{profile}] running {source.name} ...", flush=True)
        seconds = run_notebook(source, profile, out_dir)
        timings[source.stem] = round(seconds, 2)
        write_json(timings_path, timings)
        print(f"[{profile}] {source.name} done in {seconds:.1f} s", flush=True)
        if publish_twins:
            publish(out_dir / f"{source.stem}.ipynb", source.with_suffix(".ipynb"))
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enflens.study.pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute the notebooks with a profile")
    r.add_argument(
        "--profile", default="cpu", help="smoke | cpu | full | full_check (default: cpu)"
    )
    r.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 02")
    r.add_argument(
        "--publish", action="store_true", help="write executed copies to notebooks/*.ipynb"
    )
    r.add_argument("--num-processes", type=int, help="processes of a multi-process run")
    r.add_argument("--process-id", type=int, help="this process's index, 0 .. N-1")
    r.add_argument("--coordinator", help="HOST:PORT of process 0's jax.distributed service")
    r.add_argument("--distributed", action="store_true",
                   help="multi-process run with the cluster's variables (SLURM srun, Open MPI)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    args = parser.parse_args(argv)
    try:
        total = time.perf_counter()
        env = distributed_env(args.num_processes, args.process_id, args.coordinator,
                              args.distributed)  # fmt: skip
        timings = run(args.profile, args.only, args.publish, env)
    except (PipelineError, ValueError, OSError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"[{args.profile}] all {len(timings)} notebooks done in {time.perf_counter() - total:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
