# lvsm-bench: every target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PRESET ?=
preset_flag = $(if $(PRESET),--preset $(PRESET),)

.PHONY: bench test models eval table-re10k preview

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

CHECKPOINT ?=
RE10K_DIR ?=
RE10K_INDEX ?= $(if $(RE10K_DIR),$(RE10K_DIR)/evaluation_index_re10k.json,)
CHECKPOINTS ?=
SCENES ?=
eval: $(STAMP)  ## PSNR/SSIM/LPIPS on the synthetic evaluation split -> results/eval/ (CHECKPOINT=path; none: random-init models)
	$(PY) -m harness evaluate experiments/eval_synthetic.yaml $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(preset_flag)

table-re10k: $(STAMP)  ## RealEstate10K table beside the published one (RE10K_DIR=, optional CHECKPOINTS='model=path ...', SCENES=N)
	RE10K_DIR="$(RE10K_DIR)" RE10K_INDEX="$(RE10K_INDEX)" $(PY) -m harness evaluate experiments/table_re10k.yaml $(foreach c,$(CHECKPOINTS),--checkpoint $(c)) $(if $(SCENES),--set data.max_scenes=$(SCENES)) $(preset_flag)

preview: $(STAMP)  ## PNG grid of synthetic object and room scenes -> results/preview/preview.png
	$(PY) -m harness preview
