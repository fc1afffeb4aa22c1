"""The notebook pipeline: profiles, parameter cells, paired twins, failure messages."""

import json

import jupytext
import nbformat
import pytest

from enflens.study import pipeline
from enflens.study.results import repo_path


def test_profiles_have_common_section_and_notebook_sections_are_known():
    names = {s.stem for s in pipeline.notebook_sources()}
    for profile in pipeline.PROFILES:
        data = pipeline.load_profile(profile)
        assert data["common"]["PROFILE"] == profile
        unknown = set(data) - {"common"} - names
        assert not unknown, f"profiles/{profile}.yaml has sections for missing notebooks: {unknown}"


def test_unknown_profile_error_names_the_file():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        pipeline.load_profile("nope")


def test_bad_profile_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("common: [1, 2\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        pipeline.load_profile("bad", tmp_path)
    (tmp_path / "nocommon.yaml").write_text("x: {A: 1}\n")
    with pytest.raises(ValueError, match="common"):
        pipeline.load_profile("nocommon", tmp_path)


@pytest.mark.parametrize("source", pipeline.notebook_sources(), ids=lambda p: p.stem)
def test_notebook_has_one_parameters_cell_declaring_profile_params(source):
    nb = pipeline.to_notebook(source)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    declared = {
        line.split("=")[0].strip()
        for line in cell.source.splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    for profile in pipeline.PROFILES:
        params = pipeline.notebook_parameters(profile, source.stem)
        missing = set(params) - declared
        assert not missing, f"{source.name}: profile {profile} sets undeclared {missing}"


@pytest.mark.parametrize("source", pipeline.notebook_sources(), ids=lambda p: p.stem)
def test_ipynb_twin_code_cells_match_py_source(source):
    twin = source.with_suffix(".ipynb")
    assert twin.exists(), f"{twin} missing: run `make sync`"
    py_code = [c.source for c in jupytext.read(source).cells if c.cell_type == "code"]
    nb_code = [c.source for c in nbformat.read(twin, as_version=4).cells if c.cell_type == "code"]
    assert nb_code == py_code, f"{twin.name} is out of sync with {source.name}: run `make sync`"


def test_cpu_profile_overrides_nothing_but_its_name():
    """The cpu values are the notebooks' defaults (running a notebook by hand in JupyterLab
    gives the cpu study), so profiles/cpu.yaml must not restate them."""
    assert pipeline.load_profile("cpu") == {"common": {"PROFILE": "cpu"}}


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_profiles_hold_only_values_that_differ_from_the_defaults(profile):
    data = pipeline.load_profile(profile)
    for source in pipeline.notebook_sources():
        defaults = pipeline.parameter_defaults(source)
        for section in ("common", source.stem):
            for key, value in data.get(section, {}).items():
                if key == "PROFILE" or key not in defaults:
                    continue
                if isinstance(value, dict) and isinstance(defaults[key], dict):
                    same = [k for k, v in value.items() if defaults[key].get(k) == v]
                    assert not same, f"{profile}.yaml {section}.{key} restates defaults {same}"
                else:
                    assert value != defaults[key], f"{profile}.yaml {section}.{key} = default"


def test_dict_parameters_are_overridden_key_by_key():
    params = pipeline.notebook_parameters("smoke", "03_meta_learning")
    defaults = pipeline.parameter_defaults(pipeline.repo_path("notebooks", "03_meta_learning.py"))
    smoke = pipeline.load_profile("smoke")["03_meta_learning"]["META"]
    assert params["META"] == {**defaults["META"], **smoke}
    assert set(smoke) < set(params["META"])  # the profile sets only some keys


def test_missing_parameters_cell_is_an_error(tmp_path):
    src = tmp_path / "09_bad.py"
    src.write_text("# %%\nx = 1\n")
    with pytest.raises(pipeline.PipelineError, match="09_bad.py.*parameters"):
        pipeline.to_notebook(src)


def test_compact_outputs_keeps_final_progress_state():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="10%\r50%\r100%\ndone\n")]
    nb.cells.append(cell)
    out = pipeline.compact_outputs(nb)
    assert out.cells[0].outputs[0]["text"] == "100%\ndone\n"
    assert nb.cells[0].outputs[0]["text"].startswith("10%")  # original untouched


def test_failing_notebook_names_notebook_and_cell(tmp_path, monkeypatch):
    """A notebook that raises makes the pipeline name the notebook and the cell."""
    src = tmp_path / "notebooks" / "01_boom.py"
    src.parent.mkdir()
    src.write_text(
        '# %% tags=["parameters"]\nPROFILE = "cpu"\n\n'
        '# %%\nx = 1\n\n# %%\nraise RuntimeError("kaboom")\n'
    )
    with pytest.raises(pipeline.PipelineError) as err:
        pipeline.run_notebook(src, "smoke", tmp_path / "runs")
    msg = str(err.value)
    assert "01_boom.py" in msg and "cell" in msg and "kaboom" in msg
    assert (tmp_path / "runs" / "01_boom.log").exists()


def test_results_json_of_committed_cpu_run_parse():
    paths = sorted(repo_path("results", "cpu").glob("*.json"))
    names = {p.stem for p in paths}
    assert names >= {s.stem for s in pipeline.notebook_sources()} | {"metrics"}, names
    for path in paths:
        assert isinstance(json.loads(path.read_text()), dict), path


def test_publish_replaces_the_twin_with_compacted_outputs_and_no_injected_cell(tmp_path):
    source = pipeline.notebook_sources()[0]
    nb = pipeline.to_notebook(source)
    injected = nbformat.v4.new_code_cell("PROFILE = 'smoke'")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(1, injected)
    code = next(c for c in nb.cells if c.cell_type == "code" and c is not injected)
    code.outputs = [nbformat.v4.new_output("stream", text="step 1\rstep 2\rstep 3\n" * 2)]
    code.metadata["papermill"] = {"duration": 1.0}
    executed, twin = tmp_path / "run.ipynb", tmp_path / source.with_suffix(".ipynb").name
    nbformat.write(nb, executed)
    (tmp_path / source.name).write_text(source.read_text())  # the twin's .py source
    pipeline.publish(executed, twin)
    out = nbformat.read(twin, as_version=4)
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in out.cells)
    texts = [o["text"] for c in out.cells for o in c.get("outputs", []) if "text" in o]
    assert texts == ["step 3\nstep 3\n"]  # only the final state of each progress line
    assert all("papermill" not in c.metadata for c in out.cells)


def test_figures_of_non_default_profiles_do_not_overwrite_committed_figures(monkeypatch):
    from enflens.study import results

    monkeypatch.delenv(results.PROFILE_ENV, raising=False)
    assert results.figures_dir() == repo_path("figures")
    monkeypatch.setenv(results.PROFILE_ENV, "smoke")
    assert results.figures_dir() == repo_path("figures", "smoke")


def test_distributed_flags_become_the_kernels_variables_or_name_the_bad_flag():
    env = pipeline.distributed_env(2, 1, "node0:1234")
    assert env == {"ENFLENS_NUM_PROCESSES": "2", "ENFLENS_PROCESS_ID": "1",
                   "ENFLENS_COORDINATOR": "node0:1234"}  # fmt: skip
    assert pipeline.distributed_env() == {} == pipeline.distributed_env(1, 0)
    assert pipeline.distributed_env(auto=True) == {"ENFLENS_DISTRIBUTED": "auto"}
    with pytest.raises(ValueError, match="--process-id must be in"):
        pipeline.distributed_env(2, 2, "node0:1234")
    with pytest.raises(ValueError, match="--coordinator"):
        pipeline.distributed_env(2, 0, None)
    with pytest.raises(ValueError, match="--distributed"):
        pipeline.distributed_env(2, 0, "node0:1234", auto=True)
    with pytest.raises(ValueError, match="need --num-processes"):
        pipeline.distributed_env(None, 1)


def test_a_distributed_run_starts_jax_distributed_in_a_first_cell(tmp_path, monkeypatch):
    src = tmp_path / "notebooks" / "01_dist.py"
    src.parent.mkdir()
    src.write_text('# %% tags=["parameters"]\nPROFILE = "cpu"\n\n'
                   '# %%\nassert parallel.process_count() == 1\n')  # fmt: skip
    monkeypatch.setenv("ENFLENS_NUM_PROCESSES", "1")  # one process: the cell starts nothing
    pipeline.run_notebook(src, "smoke", tmp_path / "runs")
    out = nbformat.read(tmp_path / "runs" / "01_dist.ipynb", as_version=4)
    assert pipeline.DISTRIBUTED_TAG in out.cells[0].metadata["tags"]
    monkeypatch.delenv("ENFLENS_NUM_PROCESSES")  # without the variables: no such cell
    with pytest.raises(pipeline.PipelineError, match="NameError"):
        pipeline.run_notebook(src, "smoke", tmp_path / "runs")
