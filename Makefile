# lvsm-bench: every target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PRESET ?=
preset_flag = $(if $(PRESET),--preset $(PRESET),)

.PHONY: bench test models

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

bench: $(STAMP)  ## the main profiling job on the embedded default (PRESET= overrides)
	$(PY) -m harness bench $(preset_flag)

test: $(STAMP)  ## the test suite
	$(PY) -m pytest

models: $(STAMP)  ## parameter counts of every variant at every preset
	$(PY) -m harness models
