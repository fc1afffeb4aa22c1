"""Bad input never loads silently and never runs code (issue 11).

Every corrupt, hostile or mistaken input is built here; each test asserts the exception type and
that the message names the file (or key) and the problem.
"""

from __future__ import annotations

import inspect
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from enflens import checkpoint as C
from enflens.data import store as D
from enflens.integrity import IntegrityError, IntegrityWarning
from enflens.io import atomic_path, remove_stale_temps, repo_path
from enflens.metalearn.latent_store import read_latent_store, write_latent_store
from enflens.study import pipeline
from enflens.study.cache import is_cached, record_params

LIB = Path(D.__file__).parents[1]  # lib/enflens
ENV = {**os.environ, "PYTHONPATH": str(LIB.parent)}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A small generated Model II store: 12 train, 6 val, 3 test images."""
    out = tmp_path_factory.mktemp("integrity") / "store.h5"
    return D.generate("model_ii", 4, 2, out, n_val=2, n_test=1, progress=False)


def _copy(store: Path, tmp_path: Path, name: str = "bad.h5") -> Path:
    bad = tmp_path / name
    shutil.copy(store, bad)
    return bad


def _replace(path: Path, name: str, data: np.ndarray) -> None:
    """Replace dataset ``name`` of an HDF5 file by ``data`` (any dtype or shape)."""
    with h5py.File(path, "r+") as f:
        del f[name]
        f.create_dataset(name, data=data)


def _raises(exc, path: Path | str, problem: str):
    """pytest.raises(exc) whose message names the file (``path``'s name) and the problem."""
    return pytest.raises(exc, match=rf"{re.escape(Path(path).name)}.*{problem}")


# --- 1. no unrestricted unpickling -------------------------------------------------------
class _RunsCode:
    """Pickles to ``os.mkdir(path)``: unpickling it would create a directory."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _class_folders(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("no_sub", "cdm", "axion"):
        (root / name).mkdir(parents=True)
        np.save(root / name / "a.npy", rng.uniform(0, 1, (16, 16)))
    return root


def test_object_array_that_runs_code_is_refused_without_running(tmp_path):
    folder = _class_folders(tmp_path / "dl")
    marker = tmp_path / "pwned"
    hostile = np.empty(2, dtype=object)
    hostile[0], hostile[1] = np.zeros((16, 16)), _RunsCode(marker)
    bad = folder / "axion" / "hostile.npy"
    np.save(bad, hostile, allow_pickle=True)
    with _raises(D.DataFileError, bad, "refused.*posix.mkdir"):
        D.import_deeplense(folder, tmp_path / "x.h5")
    assert not marker.exists()
    assert not (tmp_path / "x.h5").exists()


def test_plain_pickle_named_npy_is_refused_without_running(tmp_path):
    folder = _class_folders(tmp_path / "dl")
    marker = tmp_path / "pwned"
    bad = folder / "cdm" / "evil.npy"
    bad.write_bytes(pickle.dumps(_RunsCode(marker)))
    with _raises(IntegrityError, bad, "not a .npy file"):
        D.import_deeplense(folder, tmp_path / "x.h5")
    assert not marker.exists()
    assert D.main(["import-deeplense", str(folder), "--out", str(tmp_path / "x.h5")]) == 1
    assert not marker.exists()


@pytest.mark.parametrize(
    "items,problem",
    [
        ([np.zeros((16, 16)), "1e-23"], "item 1 must be a float m_a"),
        ([np.zeros(16), 1e-23], "item 0 must be a 2-D float image"),
        ([np.zeros((16, 16), int), 1e-23], "item 0 must be a 2-D float image"),
        ([np.zeros((16, 16)), 1e-23, 3.0], r"not \[image, m_a\]"),
        ([np.zeros((16, 16)), float("nan")], "finite"),
        ([np.zeros((16, 16)), {"m_a": 1e-23}], "refused|item 1"),
    ],
)
def test_object_arrays_must_be_exactly_image_and_mass(tmp_path, items, problem):
    folder = _class_folders(tmp_path / "dl")
    arr = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        arr[i] = item
    bad = folder / "axion" / "odd.npy"
    np.save(bad, arr, allow_pickle=True)
    with _raises(D.DataFileError, bad, problem):
        D.import_deeplense(folder, tmp_path / "x.h5")


def test_real_axion_files_still_import(tmp_path):
    """DeepLense axion files: object arrays [image (float64), m_a (float or numpy float)]."""
    folder = _class_folders(tmp_path / "dl")
    for i, m_a in enumerate([1e-23, np.float64(3e-24)]):
        arr = np.empty(2, dtype=object)
        arr[0], arr[1] = np.random.default_rng(i).uniform(0, 2, (16, 16)), m_a
        np.save(folder / "axion" / f"axion_{i}.npy", arr, allow_pickle=True)
    s = D.load(D.import_deeplense(folder, tmp_path / "x.h5"), "train")
    np.testing.assert_allclose(np.sort(s.params["m_a"][s.labels == 2][1:]), [3e-24, 1e-23])


def test_library_never_unpickles_user_data_freely():
    sources = sorted(LIB.rglob("*.py"))  # every module, sub-packages included
    assert len(sources) > 20
    for src in sources:
        text = src.read_text()
        assert "allow_pickle=True" not in text, src
        if src.name != "integrity.py":
            assert not re.search(r"\bpickle\b", text), f"{src} mentions pickle"


# --- 2. datasets --------------------------------------------------------------------------
def test_verification_is_on_by_default():
    assert inspect.signature(D.load).parameters["verify"].default is True


@pytest.mark.parametrize(
    "name,make,problem",
    [
        ("train/images", lambda a: (a * 255).astype(np.uint8), r"\[train/images\]: dtype is uint8"),
        ("train/images", lambda a: a.reshape(len(a), 32, 128)[:, :, :64],
         r"\[train/images\]: shape is \(12, 32, 64\)"),
        ("train/images", lambda a: a.reshape(len(a), 4096),
         r"\[train/images\]: shape is \(12, 4096\)"),
        ("train/labels", lambda a: np.where(np.arange(len(a)) == 5, 7, a), r"\[0, 3\), found 7"),
        ("train/labels", lambda a: np.where(np.arange(len(a)) == 0, -1, a), r"\[0, 3\), found -1"),
        ("train/images", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 99, np.nan, a)
         .astype(np.float32), r"\[train/images\]: holds NaN or inf values \(row 0\)"),
        ("train/images", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 99, 5.0, a)
         .astype(np.float32), r"\[train/images\]: values must be in \[0, 1\], found 5"),
        ("train/labels", lambda a: a[:-1], r"\[train/\w+\]: has 12 rows, but 'labels' has 11"),
        ("train/source_amp", lambda a: np.full_like(a, np.inf), r"\[train/source_amp\]: holds"),
        ("train/sub_pos", lambda a: a[:, :24], r"\[train/sub_pos\]: shape"),
    ],
)  # fmt: skip
def test_invalid_arrays_are_refused(store, tmp_path, name, make, problem):
    bad = _copy(store, tmp_path)
    with h5py.File(bad) as f:
        arr = f[name][()]
    _replace(bad, name, make(arr))
    for verify in (True, False):
        with _raises(D.DataFileError, bad, problem):
            D.load(bad, "train", verify=verify)


def test_row_counts_must_agree(store, tmp_path):
    bad = _copy(store, tmp_path)
    with h5py.File(bad) as f:
        images = f["train/images"][()]
    _replace(bad, "train/images", images[:-1])
    with _raises(D.DataFileError, bad, r"\[train/images\]: has 11 rows, but 'labels' has 12"):
        D.load(bad, "train")


@pytest.mark.parametrize("name", ["images", "labels", "source_amp", "m_a", "noise_seed"])
def test_one_changed_value_fails_the_content_hash(store, tmp_path, name):
    """An in-range change (a flipped pixel, another valid label, a parameter) is caught."""
    bad = _copy(store, tmp_path)
    with h5py.File(bad, "r+") as f:
        arr = f[f"val/{name}"][()]
        flat = arr.reshape(len(arr), -1)
        row = 2 if name == "m_a" else 0  # val row 2 is an axion (finite m_a)
        j = int(np.argmax(np.abs(flat[row])))
        if name == "labels":
            flat[row] = (flat[row] + 1) % 3
        elif arr.dtype.kind == "i":
            flat[row, j] += 1
        else:
            flat[row, j] = np.nextafter(flat[row, j], 0)  # one ulp: still in range
        f[f"val/{name}"][...] = arr
    D.load(bad, "val", verify=False)  # passes every value check
    with _raises(D.DataFileError, bad, rf"\[val/{name}\]: sha256 .* \(data corrupted"):
        D.load(bad, "val")
    D.load(bad, "train")  # other splits still verify


def test_random_bytes_in_the_middle_of_the_file(store, tmp_path):
    bad = _copy(store, tmp_path)
    blob = bytearray(bad.read_bytes())
    mid = len(blob) // 2
    blob[mid : mid + 256] = np.random.default_rng(0).integers(0, 256, 256, np.uint8).tobytes()
    bad.write_bytes(bytes(blob))
    problems = "sha256|values must be|NaN|corrupt|truncated"
    errors = []
    for split in D.SPLITS:
        try:
            D.load(bad, split)
        except D.DataFileError as err:
            errors.append(str(err))
    assert errors, "corrupted file loaded silently"
    assert all(bad.name in e and re.search(problems, e) for e in errors), errors


def test_zeroed_tail_gives_a_clear_error(store, tmp_path):
    bad = _copy(store, tmp_path)
    blob = bytearray(bad.read_bytes())
    cut = len(blob) // 3
    blob[-cut:] = bytes(cut)
    bad.write_bytes(bytes(blob))
    with _raises(D.DataFileError, bad, "(truncated or corrupt|sha256|values must be)"):
        for split in D.SPLITS:
            D.load(bad, split)


def test_empty_and_truncated_files(store, tmp_path):
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    with _raises(D.DataFileError, empty, "0 bytes.*empty, truncated or corrupt"):
        D.load(empty, "train")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(store.read_bytes()[:2048])
    with _raises(D.DataFileError, cut, "truncated or corrupt"):
        D.load(cut, "train")


def test_missing_or_broken_attributes(store, tmp_path):
    bad = _copy(store, tmp_path)
    with h5py.File(bad, "r+") as f:
        del f.attrs["class_names"]
    with _raises(D.DataFileError, bad, "attribute 'class_names' is missing"):
        D.load(bad, "train")
    with h5py.File(bad, "r+") as f:
        f.attrs["class_names"] = '["no_sub", "cdm"'
    with _raises(D.DataFileError, bad, "'class_names' is not valid JSON"):
        D.load(bad, "train")
    bad2 = _copy(store, tmp_path, "bad2.h5")
    with h5py.File(bad2, "r+") as f:
        f["train"].attrs["content_sha256"] = "{not json"
    with _raises(D.DataFileError, bad2, "content_sha256' is not valid JSON"):
        D.load(bad2, "train")


def test_sample_params_names_a_missing_parameter_array(store, tmp_path):
    bad = _copy(store, tmp_path)
    with h5py.File(bad, "r+") as f:
        del f["test/sub_pos"]
    with _raises(D.DataFileError, bad, r"\[test/sub_pos\]: the array is missing"):
        D.sample_params(bad, "test", 0)
    with _raises(D.DataFileError, bad, r"\[test\]: the array 'sub_pos' is missing"):
        D.load(bad, "test")


def test_old_store_without_content_hash_loads_with_a_warning(store, tmp_path):
    """Files of the previous version: image hash checked, labels/parameters not covered."""
    old = _copy(store, tmp_path, "old.h5")
    with h5py.File(old, "r+") as f:
        for s in D.SPLITS:
            del f[s].attrs["content_sha256"]
    with pytest.warns(IntegrityWarning, match=r"old\.h5 \[train\].*labels and parameters not"):
        s = D.load(old, "train")
    assert len(s) == 12
    with h5py.File(old, "r+") as f:
        img = f["train/images"][0]
        img.flat[np.argmax(img)] = np.nextafter(np.float32(1), np.float32(0))
        f["train/images"][0] = img
    with _raises(D.DataFileError, old, r"\[train/images\]: sha256 of split 'train' images"):
        D.load(old, "train")


def test_verification_cost_is_small(store):
    """Hashing every array costs about as much as reading it (measured: 0.2 s for 12,900)."""
    t0 = time.perf_counter()
    for _ in range(3):
        D.load(store, "train", verify=False)
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(3):
        D.load(store, "train")
    assert time.perf_counter() - t0 < 10 * plain + 0.5


# --- 2. latent stores ---------------------------------------------------------------------
def _latent_store(path: Path, n: int = 36, **over) -> Path:
    rng = np.random.default_rng(0)
    kw = dict(
        latents=rng.normal(size=(n, 8)).astype(np.float32), labels=np.arange(n) % 3,
        psnr=np.full(n, 30.0), kind="cnf", model_config={}, decoder_path="d", decoder_hash="h",
    )  # fmt: skip
    return write_latent_store(path, **{**kw, **over})


def test_unreadable_latent_stores_name_the_file(tmp_path):
    good = _latent_store(tmp_path / "good.h5")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.h5"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes())
    for bad in (cut, empty, noise):
        with _raises(IntegrityError, bad, "(empty, truncated or corrupt|truncated or corrupt)"):
            read_latent_store(bad)
    with h5py.File(good, "r+") as f:
        del f.attrs["extra"]
    with _raises(IntegrityError, good, r"attributes \['extra'\] are missing"):
        read_latent_store(good)


def test_invalid_latent_stores_are_refused(tmp_path):
    path = _latent_store(tmp_path / "s.h5")
    _replace(path, "latents/z", np.zeros((31, 8), np.float32))
    with _raises(IntegrityError, path, r"\[latents/z\]: has 31 rows, but 'labels' has 36"):
        read_latent_store(path)
    path = _latent_store(tmp_path / "nan.h5")
    with h5py.File(path, "r+") as f:
        f["latents/z"][3, 2] = np.nan
    with _raises(IntegrityError, path, r"\[latents/z\]: holds NaN or inf values \(row 3\)"):
        read_latent_store(path)
    path = _latent_store(tmp_path / "label.h5")
    with h5py.File(path, "r+") as f:
        f["labels"][4] = 9
    with _raises(IntegrityError, path, r"\[labels\]: values must be in \[0, 3\), found 9"):
        read_latent_store(path)
    path = _latent_store(tmp_path / "flip.h5")
    with h5py.File(path, "r+") as f:
        f["latents/z"][0, 0] += 0.5
    read_latent_store(path, verify=False)
    with _raises(IntegrityError, path, r"\[latents/z\]: sha256"):
        read_latent_store(path)


def test_write_refuses_what_a_reader_would_refuse(tmp_path):
    z = np.zeros((4, 3), np.float32)
    z[1, 1] = np.nan
    with _raises(IntegrityError, "nan.h5", "NaN"):
        _latent_store(tmp_path / "nan.h5", n=4, latents=z)
    with _raises(IntegrityError, "lab.h5", r"\[0, 3\), found 5"):
        _latent_store(tmp_path / "lab.h5", n=4, labels=[0, 1, 5, 2])
    assert not list(tmp_path.iterdir())


def test_format_1_latent_store_loads_with_a_warning(tmp_path):
    path = _latent_store(tmp_path / "v1.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 1
        del f.attrs["content_sha256"]
    with pytest.warns(IntegrityWarning, match=r"v1\.h5.*no content hash"):
        assert len(read_latent_store(path)) == 36


# --- 2. checkpoints -----------------------------------------------------------------------
def _flip_bytes(folder: Path, n: int = 32) -> Path:
    """Overwrite ``n`` bytes in the middle of the largest file under ``folder``."""
    big = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    blob = bytearray(big.read_bytes())
    mid = len(blob) // 2
    blob[mid : mid + n] = bytes(b ^ 0xFF for b in blob[mid : mid + n])
    big.write_bytes(bytes(blob))
    return big


def _tree() -> dict:
    rng = np.random.default_rng(0)
    return {
        "w": rng.normal(size=(64, 64)).astype(np.float32),
        "b": np.zeros(64, np.float32),
        "step": np.asarray(3, np.int32),
    }


def test_run_checkpoint_with_flipped_bytes_is_refused(tmp_path):
    tree = _tree()
    manager = C.CheckpointManager(tmp_path / "run")
    manager.save(1, tree)
    restored = manager.restore(_tree())
    np.testing.assert_array_equal(restored["w"], tree["w"])  # negative control
    _flip_bytes(tmp_path / "run" / "1")
    where = re.escape(str((tmp_path / "run" / "1").resolve()))
    with pytest.raises(IntegrityError, match=f"{where}.*corrupt"):
        manager.restore(_tree())
    manager.close()


def test_decoder_meta_json_truncated(tmp_path):
    path = tmp_path / "decoder"
    C.save_decoder(path, _tree(), {"kind": "cnf", "model_config": {}, "image_shape": [8, 8, 1]})
    meta = path / "meta.json"
    meta.write_text(meta.read_text()[:20])
    with _raises(IntegrityError, meta, "meta.json is not valid JSON"):
        C.load_decoder(path, _tree())


def test_decoder_with_flipped_bytes_is_refused(tmp_path):
    path = tmp_path / "decoder"
    C.save_decoder(path, _tree(), {"kind": "cnf", "model_config": {}, "image_shape": [8, 8, 1]})
    _flip_bytes(path / "params")
    with _raises(IntegrityError, path, "(content hash|corrupt)"):
        C.load_decoder(path, _tree())


def test_classifier_checkpoint_with_flipped_bytes_is_refused(tmp_path):
    import jax
    from flax import nnx

    from enflens.classify import train
    from enflens.classify.latent_models import make_classifier

    def model(seed):
        rngs = nnx.Rngs(jax.random.key(seed, impl="rbg"))
        return make_classifier("enf_mlp", context_dim=4, num_latents=9, hidden=64, rngs=rngs)

    train.save_checkpoint(model(0), tmp_path / "ck")
    train.restore_checkpoint(model(1), tmp_path / "ck")  # negative control: intact
    _flip_bytes(tmp_path / "ck" / "state")
    with _raises(IntegrityError, tmp_path / "ck" / "state", "corrupt"):
        train.restore_checkpoint(model(1), tmp_path / "ck")


# --- 3. workers ---------------------------------------------------------------------------
def test_workers_are_spawned_and_import_no_jax():
    assert D._mp_context().get_start_method() == "spawn"
    code = "import sys, enflens.data; print(sorted(m for m in sys.modules if m == 'jax'))"
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_generate_with_workers_gives_no_fork_warning(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        two = D.generate("model_ii", 1, 3, tmp_path / "two.h5", workers=2, n_val=0, n_test=0,
                         chunk_size=1, progress=False)  # fmt: skip
    assert not [w for w in caught if "fork" in str(w.message)]
    one = D.generate("model_ii", 1, 3, tmp_path / "one.h5", n_val=0, n_test=0, progress=False)
    np.testing.assert_array_equal(D.load(one, "train").images, D.load(two, "train").images)


# --- 4. interrupted writes and output paths -----------------------------------------------
_WRITER = """
import sys, time
from enflens.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"x" * 100000)
    print(tmp, flush=True)
    time.sleep(60)
"""


def _writer(out: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(out)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.exists() and tmp.parent == out.parent
    return proc, tmp


def test_sigterm_removes_the_temporary_file(tmp_path):
    proc, tmp = _writer(tmp_path / "out.h5")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    assert not tmp.exists() and not list(tmp_path.iterdir())


def test_stale_temp_of_a_killed_run_is_removed_next_time(tmp_path):
    out = tmp_path / "out.h5"
    proc, tmp = _writer(out)
    live, live_tmp = _writer(tmp_path / "other.h5")
    proc.kill()
    proc.wait(30)
    assert tmp.exists()  # SIGKILL cannot be caught
    (tmp_path / ".unrelated.tmp").write_text("not ours")
    assert remove_stale_temps(tmp_path / "other.h5") == []  # its writer is alive
    with atomic_path(out) as new:
        new.write_text("done")
    assert not tmp.exists() and out.read_text() == "done"
    assert live_tmp.exists() and (tmp_path / ".unrelated.tmp").exists()
    live.kill()
    live.wait(30)


def test_sigterm_during_generate_leaves_nothing(tmp_path):
    out = tmp_path / "big.h5"
    argv = ["generate", "--recipe", "model_ii", "--n-per-class", "3000", "--seed", "0",
            "--out", str(out), "--no-progress"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "enflens.data", *argv], env=ENV)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".big.h5.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(tmp_path.glob(".big.h5.*.tmp")), "generate never started writing"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) != 0
    assert not list(tmp_path.iterdir())


def test_output_paths_are_checked_before_any_compute(tmp_path, monkeypatch):
    def no_compute(*args, **kwargs):
        raise AssertionError("the simulation started")

    monkeypatch.setattr(D, "_runner", no_compute)
    with _raises(IsADirectoryError, tmp_path, "is a directory"):
        D.generate("model_ii", 2, 0, tmp_path)
    existing = tmp_path / "x.h5"
    existing.write_text("keep me")
    with _raises(FileExistsError, existing, "already exists.*--force"):
        D.generate("model_ii", 2, 0, existing)
    assert existing.read_text() == "keep me"
    folder = tmp_path / "deeplense"
    _class_folders(folder)
    with _raises(FileExistsError, existing, "already exists"):
        D.import_deeplense(folder, existing)


def test_force_replaces_and_the_cache_forgets_the_old_file(tmp_path):
    out = tmp_path / "d.h5"
    D.generate("model_ii", 1, 0, out, n_val=0, n_test=0, progress=False)
    record_params(out, {"seed": 0})
    assert is_cached(out)
    D.generate("model_ii", 1, 1, out, n_val=0, n_test=0, progress=False, force=True)
    assert D.load(out, "train").attrs["seed"] == 1
    assert not is_cached(out)  # the record described the replaced file
    record_params(out, {"seed": 1})
    assert is_cached(out)
    os.utime(out, ns=(time.time_ns() + 10**9,) * 2)  # replaced behind the cache's back
    assert not is_cached(out)


# --- 5. profiles --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,problem",
    [
        ("common: {PROFILE: p, N_TRIAN: 5}\n", r"\[common.N_TRIAN\]: unknown key 'N_TRIAN'"),
        ("common: {PROFILE: p, N_TRAIN: lots}\n",
         r"\[common.N_TRAIN\]: expected int \(like the default 3000\), got str 'lots'"),
        ("common: {PROFILE: p}\n07_extra: {A: 1}\n", r"\[07_extra\]: unknown section '07_extra'"),
        ("common: {PROFILE: p}\n01_lensing_data: {N_SHOW: 2.5}\n",
         r"\[01_lensing_data.N_SHOW\]: expected int"),
        ("common: {PROFILE: p}\n03_meta_learning: {ENF_CONFIG: {num_latens: 9}}\n",
         r"\[03_meta_learning.ENF_CONFIG.num_latens\]: unknown key"),
        ("common: {PROFILE: p}\n02_enf_theory: {EQ_CHECK_ALL: 1}\n", r"expected bool"),
        ("common: {PROFILE: p}\n02_enf_theory: {K_VALUES: [1, two]}\n", r"element 1 is str"),
    ],
)  # fmt: skip
def test_profiles_are_validated_when_loaded(tmp_path, text, problem):
    (tmp_path / "p.yaml").write_text(text)
    with _raises(IntegrityError, "p.yaml", problem):
        pipeline.load_profile("p", tmp_path)


def test_partial_profile_overrides_are_accepted(tmp_path):
    (tmp_path / "p.yaml").write_text(
        "common: {PROFILE: p, N_TRAIN: 10}\n"
        "03_meta_learning: {META: {outer_lr: 1}, META_OVERRIDES: {cnf: {outer_lr: 0.1}}}\n"
        "04_latent_visualization: {TSNE_PERPLEXITY: 20}\n"  # an int where a float is expected
    )
    assert pipeline.load_profile("p", tmp_path)["common"]["N_TRAIN"] == 10
    for profile in pipeline.PROFILES:  # the committed profiles are valid
        pipeline.load_profile(profile, repo_path("profiles"))


# --- 6. command lines ---------------------------------------------------------------------
def test_data_cli_prints_one_line_and_exits_non_zero(store, tmp_path, capsys):
    bad = _copy(store, tmp_path)
    argv = ["generate", "--recipe", "model_ii", "--n-per-class", "1", "--seed", "0"]
    assert D.main([*argv, "--out", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.h5 already exists" in err and "Traceback" not in err
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"junk")
    assert D.main(["info", str(junk)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "junk.h5" in err and err.count("\n") == 1
    with pytest.raises(D.DataFileError, match="junk.h5"):
        D.main(["--debug", "info", str(junk)])


def test_pipeline_cli_prints_one_line(capsys):
    assert pipeline.main(["run", "--profile", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err
    with pytest.raises(ValueError, match="nope"):
        pipeline.main(["--debug", "run", "--profile", "nope"])


def test_unguarded_script_with_workers_does_not_rerun_itself(tmp_path):
    """spawn re-imports ``__main__`` in each worker; the script must still run exactly once."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import sys\n"
        "from enflens import data\n"
        "print('started', flush=True)\n"
        "data.generate('model_ii', 1, 0, sys.argv[1], workers=2, n_val=0, n_test=0,\n"
        "              chunk_size=1, progress=False)\n"
    )
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "u.h5")], env=ENV,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("started") == 1
    assert len(D.load(tmp_path / "u.h5", "train")) == 3
