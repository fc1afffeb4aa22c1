"""environment.yml mirrors the exact pins of pyproject.toml."""

import re
import tomllib

import yaml

from enflens.study.results import repo_path


def test_environment_yml_mirrors_pyproject_pins():
    project = tomllib.loads(repo_path("pyproject.toml").read_text())["project"]
    pins = project["dependencies"] + project["optional-dependencies"]["dev"]
    for pin in pins:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][0-9A-Za-z.]*", pin), (
            f"not an exact pin: {pin}"
        )
    env = yaml.safe_load(repo_path("environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(p for p in pip_section if "==" in p) == sorted(pins)
