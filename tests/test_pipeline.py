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


@pytest.mark.parametrize("source", pipeline.notebook_sources(), ids=lambda p: p.stem)
def test_cpu_profile_equals_notebook_defaults(source):
    """Running a notebook by hand (JupyterLab) gives the cpu profile, and the published
    twins (papermill's injected cell dropped) show the values that produced their outputs."""
    defaults = pipeline.parameter_defaults(source)
    for key, value in pipeline.notebook_parameters("cpu", source.stem).items():
        assert defaults.get(key) == value, (
            f"{source.name}: parameters cell has {key} = {defaults.get(key)!r}, "
            f"profiles/cpu.yaml has {value!r}"
        )


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
    for path in repo_path("results", "cpu").glob("*.json"):
        json.loads(path.read_text())


def test_figures_of_non_default_profiles_do_not_overwrite_committed_figures(monkeypatch):
    from enflens.study import results

    monkeypatch.delenv(results.PROFILE_ENV, raising=False)
    assert results.figures_dir() == repo_path("figures")
    monkeypatch.setenv(results.PROFILE_ENV, "smoke")
    assert results.figures_dir() == repo_path("figures", "smoke")
