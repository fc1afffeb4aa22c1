"""enflens.parallel: data parallelism over a device mesh and over processes.

The heavy checks run in subprocesses started together at the first use (the CPU count of a
process's devices is fixed when JAX starts): a 4-device run against the first device alone
(tests/parallel_worker.py), and a 2-process ``jax.distributed`` run against one process with
the same 2 devices (tests/distributed_worker.py).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from enflens import data, parallel
from enflens.testing import lens_like_images

HERE = Path(__file__).parent
LIB = HERE.parent / "lib"
TIMEOUT = 900  # generous: on CI the smoke runs of test_reproduce_smoke.py share the cores


def _env(devices: int) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": f"{LIB}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.pop("ENFLENS_NUM_PROCESSES", None)
    return env


def _start(args: list[str], devices: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *map(str, args)], env=_env(devices),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, f"{proc.args} failed:\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _store(folder: Path) -> Path:
    """A 15-image DeepLense-style store (5 per class, 16x16)."""
    imgs = lens_like_images(15, size=16)
    for i, name in enumerate(("no_sub", "cdm", "axion")):
        (folder / "dl" / name).mkdir(parents=True)
        for j in range(5):
            np.save(folder / "dl" / name / f"{j}.npy", imgs[5 * i + j])
    return data.import_deeplense(folder / "dl", folder / "ds.h5")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """All subprocesses, started at once so that they share the cores."""
    tmp = tmp_path_factory.mktemp("parallel")
    ds = _store(tmp)
    worker = HERE / "distributed_worker.py"
    coordinator = f"localhost:{_free_port()}"
    procs = {
        "mesh": _start([HERE / "parallel_worker.py"], 4),
        "single": _start([worker, ds, tmp / "single"], 2),
        "pair": [_start([worker, ds, tmp / "pair", coordinator, 2, i], 1) for i in (0, 1)],
    }
    yield tmp, procs
    for p in [procs["mesh"], procs["single"], *procs["pair"]]:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_four_devices_match_one_device_and_another_batch_order_does_not(runs):
    res = _result(runs[1]["mesh"])
    assert res["devices"] == 4
    for loop in ("meta_train", "encode", "classifier"):
        assert res["diff"][loop] < 1e-5, (loop, res)
        assert res["control"][loop] > 1e-3, (loop, res)  # the comparison can see a difference


def _h5(path: Path) -> tuple[dict, dict]:
    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path) as f:

        def add(name, obj):
            if isinstance(obj, h5py.Dataset):
                arrays[name] = obj[()]

        f.visititems(add)
        attrs = dict(f.attrs.items())
    return arrays, attrs


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_two_processes_write_the_single_process_latent_store_and_checkpoint(runs):
    tmp, procs = runs
    single = _result(procs["single"])
    pair = sorted((_result(p) for p in procs["pair"]), key=lambda r: r["process"])
    assert single["processes"] == 1 and single["devices"] == 2 and single["rows_read"] == 15
    assert [r["processes"] for r in pair] == [2, 2] and pair[0]["devices"] == 2
    # batches of 8 rows (the last padded): each process read only its half of every batch
    assert [r["rows_read"] for r in pair] == [8, 7]
    ref, got = _h5(tmp / "single" / "latents.h5"), _h5(tmp / "pair" / "latents.h5")
    assert _same(ref[0], got[0]) and ref[1] == got[1]
    one_ulp = {**ref[0], "psnr": np.nextafter(ref[0]["psnr"], np.inf, dtype=np.float32)}
    assert not _same(ref[0], one_ulp)  # negative control: one ulp is a difference
    # one checkpoint, written by process 0, nothing left half-written
    assert sorted(p.name for p in (tmp / "pair" / "ckpt").iterdir()) == ["2"]
    assert not [p for p in (tmp / "pair").rglob("*") if "tmp" in p.name]
    with ocp.StandardCheckpointer() as ckptr:
        a, b = (ckptr.restore(tmp / r / "ckpt" / "2" / "default") for r in ("single", "pair"))
    assert len(jax.tree.leaves(a)) > 10
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                    strict=True))  # fmt: skip


# ----------------------------------------------------------------------------- in-process


def test_batch_not_divisible_by_the_devices_is_an_error_naming_the_batch():
    mesh = parallel.data_mesh(jax.devices()[:1])
    assert parallel.check_batch(6, mesh, "x") == 6
    assert parallel.local_slice(6, mesh) == slice(0, 6)
    fake = type("M", (), {"shape": {parallel.AXIS: 4}})()
    with pytest.raises(ValueError, match=r"MetaConfig.batch_size=6 .* 4 devices"):
        parallel.check_batch(6, fake, "MetaConfig.batch_size")


def test_single_device_sharding_round_trips_values():
    mesh = parallel.data_mesh(jax.devices()[:1])
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    got = parallel.to_host(parallel.shard_batch({"x": x}, mesh, 4))["x"]
    np.testing.assert_array_equal(got, x)
    rep = parallel.replicate({"w": x, "k": jax.random.key(0)}, mesh)
    assert rep["w"].sharding == parallel.replicated(mesh)
    assert parallel.agree(False) is False and parallel.broadcast_from_main(x) is x


def test_initialize_checks_its_arguments():
    assert parallel.initialize(num_processes=1) is False
    with pytest.raises(ValueError, match="together"):
        parallel.initialize("localhost:1234", 2)
    with pytest.raises(ValueError, match=r"process_id=2 is not in \[0, 2\)"):
        parallel.initialize("localhost:1234", 2, 2)
    with pytest.raises(ValueError, match="ENFLENS_COORDINATOR"):
        parallel.initialize_from_env({"ENFLENS_NUM_PROCESSES": "2", "ENFLENS_PROCESS_ID": "1"})
    with pytest.raises(ValueError, match="must be integers"):
        parallel.initialize_from_env({parallel.ENV_NUM_PROCESSES: "two"})


def test_split_rows_reads_and_checks_only_the_rows_asked_for(tmp_path):
    path = _store(tmp_path)
    full = data.load(path, "train")
    rows = data.SplitRows(path, "train")
    assert rows.shape == (15, 16, 16) and len(rows) == 15
    np.testing.assert_array_equal(rows.labels, full.labels)
    np.testing.assert_array_equal(rows[np.array([7, 2, 2])], full.images[[7, 2, 2]])
    assert rows.rows_read == 2
    with pytest.raises(IndexError, match=r"ds.h5.*out of range"):
        rows[np.array([15])]
    with h5py.File(path, "r+") as f:
        f["train/images"][3] = 2.0  # outside [0, 1]
    bad = data.SplitRows(path, "train")
    bad[np.array([0, 1])]  # rows 0 and 1 are fine
    with pytest.raises(data.DataFileError, match=r"ds.h5.*train/images"):
        bad[np.array([3])]
    with pytest.raises(data.DataFileError, match="no split 'nope'"):
        data.SplitRows(path, "nope")
