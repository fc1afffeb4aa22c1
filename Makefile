# enf-lensing: two commands on a fresh machine (python3 >= 3.11 and pip, nothing else).
#   make reproduce [PROFILE=smoke|cpu|full]   run notebooks 01 -> 06 with papermill
#   make test                                  lint + pytest (includes the smoke run of every notebook)
SHELL   := /bin/bash
PROFILE ?= cpu
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp

.PHONY: install reproduce smoke test lint lab sync bench clean-runs help

help:
	@echo "make reproduce [PROFILE=smoke|cpu|full]  run all notebooks (default profile: cpu)"
	@echo "make test                                 ruff + pytest incl. the notebook smoke run"
	@echo "make smoke | lab | sync | bench | lint"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "python >= 3.11 needed, found " + sys.version'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name enflens --display-name "Python (enflens)" >/dev/null
	touch $(STAMP)

install: $(STAMP)

reproduce: $(STAMP)
	$(PY) -m enflens.study.pipeline run --profile $(PROFILE)

smoke: $(STAMP)
	$(PY) -m enflens.study.pipeline run --profile smoke

lint: $(STAMP)
	$(VENV)/bin/ruff check lib tests bench notebooks

test: $(STAMP) lint
	$(VENV)/bin/pytest -q --durations=15

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

sync: $(STAMP)
	$(VENV)/bin/jupytext --sync notebooks/[0-9][0-9]_*.py

bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-runs:
	rm -rf runs/
