"""The full-size GPU run: the full profile, its CPU rehearsal profile, the wheel list, the packer.

The GPU run itself (bench/gpu_full.sh) needs a GPU machine; bench/gpu_full_check.sh rehearses it
on the CPU. These tests are the fast part: what the profile holds, and that the outputs are
packed within what a device run can bring back.
"""

from __future__ import annotations

import importlib.util
import io
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from enflens.io import repo_path
from enflens.study import pipeline


def _load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, repo_path("bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


pack_outputs = _load_bench("pack_outputs")  # bench/ is not a package
MiB = pack_outputs.MiB

#: Per-step times measured on one H200 (profiles/full.yaml's header), in seconds.
META_STEP_S = {"enf": 0.0234, "cnf": 0.0070}
CLASSIFIER_STEP_S = {"enf_mlp": 0.0011, "cnf_mlp": 0.0011, "enf_ponita": 0.0035,
                     "enf_transformer": 0.0045, "resnet18": 0.0097, "c8_gcnn": 0.0064}  # fmt: skip


def _effective(profile: str, notebook: str) -> dict:
    """Every parameter of ``notebook`` as the profile runs it (defaults, then the overrides)."""
    defaults = pipeline.parameter_defaults(repo_path("notebooks", f"{notebook}.py"))
    return {**defaults, **pipeline.notebook_parameters(profile, notebook)}


def test_full_profiles_validate_against_the_notebooks():
    for profile in ("full", "full_check"):
        data = pipeline.load_profile(profile)  # keys and types checked against parameters cells
        for section, values in data.items():
            if section == "common":
                continue
            defaults = pipeline.parameter_defaults(repo_path("notebooks", f"{section}.py"))
            for key, value in values.items():  # only overrides (dicts: key by key)
                if isinstance(value, dict) and isinstance(defaults[key], dict):
                    same = [k for k, v in value.items() if defaults[key].get(k) == v]
                    assert not same, f"{profile}.yaml {section}.{key} restates defaults {same}"
                else:
                    assert value != defaults[key], f"{profile}.yaml {section}.{key} = default"


def test_full_profile_runs_the_timed_settings():
    """The step budgets are sized from times measured at these settings; if a notebook default
    they inherit changes, the profile must pin the old value (or be re-timed)."""
    p03 = _effective("full", "03_meta_learning")
    enf = p03["ENF_CONFIG"]
    assert (enf["hidden"], enf["k_nearest"]) == (128, 9)
    # the CNF size known to learn on the H200 (hidden 256 / 5 layers did not)
    assert (p03["CNF_CONFIG"]["hidden"], p03["CNF_CONFIG"]["num_layers"]) == (128, 3)
    meta, cnf_meta = p03["META"], {**p03["META"], **p03["META_OVERRIDES"]["cnf"]}
    assert (meta["batch_size"], meta["inner_pixels"], meta["outer_pixels"]) == (32, 1024, 1024)
    assert meta["first_order"] is False and meta["inner_steps"] == 3
    assert cnf_meta["outer_lr"] == pytest.approx(3e-4)
    p05 = _effective("full", "05_classifiers")
    assert p05["BATCH_SIZE"] == 256
    assert all(not p05["MODEL_CONFIGS"].get(m) for m in p05["MODELS"])  # the timed sizes
    assert p05["PATIENCE"] is not None  # selection and early stop on the validation split


def test_full_profile_step_budgets_fit_the_planned_seconds():
    """Steps x measured step times: the training shares of the ~540 s plan in full.yaml."""
    p03 = _effective("full", "03_meta_learning")
    meta = sum(p03["META"]["num_steps"] * s for s in META_STEP_S.values())
    p05 = _effective("full", "05_classifiers")
    clf = sum(p05["STEPS"][m] * CLASSIFIER_STEP_S[m] for m in p05["MODELS"])
    p06 = _effective("full", "06_results")
    fractions = sum(1 for f in p06["DE_FRACTIONS"] if f < 1.0)
    de = fractions * sum(p06["DE_STEPS"][m] * CLASSIFIER_STEP_S[m] for m in p06["DE_MODELS"])
    assert meta <= 125 and clf <= 65 and de <= 27, (meta, clf, de)
    # every classifier sees at least 5 epochs of the 90,000 training images
    per_epoch = 3 * _effective("full", "01_lensing_data")["N_TRAIN"] / 256
    assert min(p05["STEPS"].values()) >= 5 * per_epoch


def test_full_check_rehearses_every_key_of_the_full_profile():
    full, check = pipeline.load_profile("full"), pipeline.load_profile("full_check")
    for section, values in full.items():
        missing = set(values) - set(check.get(section, {})) - {"WORKERS"}  # 2: the default
        assert not missing, f"full_check.yaml {section} lacks {sorted(missing)}"


def test_wheel_list_is_pinned_once_each_and_shadows_nothing_of_the_image():
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    lines = [ln.strip() for ln in repo_path("bench", "gpu_wheels.txt").read_text().splitlines()]
    pins = [ln for ln in lines if ln and not ln.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][0-9A-Za-z.]*", p) for p in pins), pins
    names = [norm(p.split("==")[0]) for p in pins]
    assert len(names) == len(set(names))
    image = repo_path("bench", "gpu_image_packages.txt").read_text().splitlines()
    image = {norm(ln) for ln in image if ln and not ln.startswith("#")}
    assert {"jax", "jaxlib", "flax", "numpy"} <= image
    assert not set(names) & image, set(names) & image
    assert {"lenstronomy", "papermill", "jupytext", "ipykernel", "astropy"} <= set(names)


def test_gpu_scripts_parse():
    for script in ("gpu_full.sh", "fetch_wheels.sh", "gpu_full_check.sh"):
        subprocess.run(["bash", "-n", str(repo_path("bench", script))], check=True)


def _random_file(path, n_bytes, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).bytes(n_bytes))  # incompressible


def _check_limits(out, limits):
    files = sorted(out.iterdir())
    assert all(f.is_file() for f in files)
    assert len(files) <= limits.max_files
    assert all(f.stat().st_size <= limits.max_bytes for f in files)
    assert sum(f.stat().st_size for f in files) <= limits.max_total
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f.name) for f in files)
    return files


def _members(out, stem):
    blob = b"".join(p.read_bytes() for p in sorted(out.glob(f"{stem}.tar.gz*")))
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_pack_respects_the_device_limits_at_their_real_size(tmp_path):
    """8 files, 16 MiB each, 64 MiB together: an archive over 16 MiB is split and rejoins; a log
    over 16 MiB keeps its head and tail; what cannot fit is left out and said."""
    root, out = tmp_path / "repo", tmp_path / "out"
    _random_file(root / "runs/full/03.ipynb", 20 * MiB, 0)  # one archive of two parts
    for i in range(3):
        _random_file(root / f"figures/full/f{i}.png", 2 * MiB, 1 + i)
    _random_file(root / "big/a.bin", 30 * MiB, 9)  # cannot fit in what is left: left out
    _random_file(root / "big/b.bin", 1000, 10)
    out.mkdir()
    (out / "gpu_full.log").write_bytes(b"start\n" + b"x" * (17 * MiB) + b"\nend\n")
    files = pack_outputs.pack(out, [("notebooks", ["runs/full"]), ("figures", ["figures/full"]),
                                    ("big", ["big"]), ("gone", ["results/full"])],
                              root=root)  # fmt: skip
    _check_limits(out, pack_outputs.Limits())
    names = {f.name for f in files}
    assert {"notebooks.tar.gz.00", "notebooks.tar.gz.01", "figures.tar.gz", "big.tar.gz"} <= names
    notebook = (root / "runs/full/03.ipynb").read_bytes()
    assert _members(out, "notebooks")["runs/full/03.ipynb"] == notebook
    assert len(_members(out, "figures")) == 3
    assert set(_members(out, "big")) == {"big/b.bin"}
    log = (out / "gpu_full.log").read_bytes()
    assert log.startswith(b"start\n") and log.endswith(b"\nend\n")
    manifest = (out / "MANIFEST.txt").read_text()
    assert "left out (limits): big/a.bin" in manifest and "missing" in manifest
    assert "cat notebooks.tar.gz.*" in manifest


def test_pack_drops_the_largest_members_when_files_run_out(tmp_path):
    root, out = tmp_path / "repo", tmp_path / "out"
    for g in "abc":
        _random_file(root / g / "small.txt", 100, ord(g))
    _random_file(root / "a" / "large.bin", 3000, 1)
    limits = pack_outputs.Limits(max_files=3, max_bytes=2048, max_total=16 * 1024)
    pack_outputs.pack(out, [(g, [g]) for g in "bac"], root=root, limits=limits)
    files = _check_limits(out, limits)
    # the manifest takes a slot; a's large member would need a second part: left out; c finds
    # no slot at all
    assert [f.name for f in files] == ["MANIFEST.txt", "a.tar.gz", "b.tar.gz"]
    assert set(_members(out, "a")) == {"a/small.txt"}
    manifest = (out / "MANIFEST.txt").read_text()
    assert "left out (limits): a/large.bin" in manifest
    assert "left out (limits): c/small.txt" in manifest


def test_pack_refuses_what_cannot_come_back(tmp_path):
    (tmp_path / "out" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="not a plain file"):
        pack_outputs.pack(tmp_path / "out", [], root=tmp_path)
    with pytest.raises(ValueError, match="bad group name"):
        pack_outputs.pack(tmp_path / "out2", [("a b", ["x"])], root=tmp_path)


def test_headline_reads_a_partial_run(tmp_path):
    (tmp_path / "runs" / "full").mkdir(parents=True)
    (tmp_path / "runs" / "full" / "timings.json").write_text('{"01_lensing_data": 30.5}')
    text = pack_outputs.headline("full", tmp_path)
    assert "30.5" in text and "05_classifiers: no results" in text
