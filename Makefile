# lvsm-bench: every target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PRESET ?=
preset_flag = $(if $(PRESET),--preset $(PRESET),)

.PHONY: help bench test reports models flops speed kv-cache one-more-target efficiency-table gpu-check eval table-re10k table-objects preview convergence \
	depth-study view-generalization ablations camera-encoding paper site parity op-profile benchmarks

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 20

bench: $(STAMP)  ## the main profiling job on the embedded default (PRESET= overrides)
	$(PY) -m harness run experiments/bench.yaml $(preset_flag)

# Tolerances must hold on every x86-64 CPU, not one kernel path: the fixture comparisons run again with
# PyTorch's own kernels unvectorised and oneDNN capped at AVX2 (on AVX-512 machines, both differ from the default).
SECOND_KERNEL_PATH := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=AVX2
test: $(STAMP)  ## ruff, the test suite, then the fixture-parity tests again on a second CPU kernel path
	$(VENV)/bin/ruff check .
	$(PY) -m pytest
	@echo "parity tests on a second CPU kernel path: $(SECOND_KERNEL_PATH)"
	$(SECOND_KERNEL_PATH) $(PY) -m pytest -m parity

models: $(STAMP)  ## every registered variant: label, config fields it reads, parameters per preset
	$(PY) -m harness ls models

flops: $(STAMP)  ## forward FLOPs of all variants for N=1..64, M=1,8 at the paper preset (meta device) -> results/flops/
	$(PY) -m harness run experiments/flops.yaml $(preset_flag)

speed: $(STAMP)  ## latency/memory/FLOPs vs N (1..64) and M (1, 8), all variants -> results/speed_vs_views/
	$(PY) -m harness run experiments/speed_vs_views.yaml $(preset_flag)

kv-cache: $(STAMP)  ## adding one view to N: Efficient-LVSM KV cache vs decoder-only recompute -> results/kv_cache/
	$(PY) -m harness run experiments/kv_cache.yaml $(preset_flag)

one-more-target: $(STAMP)  ## one more target view given a scene state vs N, all variants: FLOPs (paper preset, meta) and latency -> results/render_one_more_target/
	$(PY) -m harness run experiments/render_one_more_target.yaml $(preset_flag)

efficiency-table: $(STAMP)  ## the published efficiency table with ours beside it, at its inferred setting (N=6, M=7) and at N=2, M=1 -> results/efficiency_table*/
	$(PY) -m harness run experiments/efficiency_table.yaml $(preset_flag)
	$(PY) -m harness run experiments/efficiency_table_n2.yaml $(preset_flag)

benchmarks: $(STAMP)  ## speed across commits (pytest-benchmark): each variant's forward, one more target, the KV-cache step; saved in .benchmarks/, compared with the last run
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-autosave --benchmark-compare --benchmark-sort=name \
		--benchmark-columns=median,iqr,rounds

gpu-check: $(STAMP)  ## CUDA machine only: CUDA tests + speed/efficiency/kv-cache at paper preset, bf16 -> $$OUT or results/gpu/
	bash scripts/gpu_check.sh

CHECKPOINT ?=
RE10K_DIR ?=
RE10K_INDEX ?= $(if $(RE10K_DIR),$(RE10K_DIR)/evaluation_index_re10k.json,)
CHECKPOINTS ?=
SCENES ?=
eval: $(STAMP)  ## PSNR/SSIM/LPIPS of the convergence models (shipped in weights/convergence/) on its held-out split -> results/eval/ (CHECKPOINT= another of ours)
	$(PY) -m harness run experiments/eval_synthetic.yaml $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(preset_flag)

table-re10k: $(STAMP)  ## RealEstate10K table beside the published one (RE10K_DIR=, optional CHECKPOINTS='model=path ...', SCENES=N)
	RE10K_DIR="$(RE10K_DIR)" RE10K_INDEX="$(RE10K_INDEX)" $(PY) -m harness run experiments/table_re10k.yaml $(foreach c,$(CHECKPOINTS),--checkpoint $(c)) $(if $(SCENES),--set data.max_scenes=$(SCENES)) $(preset_flag)

preview: $(STAMP)  ## PNG grid of synthetic object and room scenes -> results/preview/preview.png
	$(PY) -m harness preview

convergence: $(STAMP)  ## train the variants on one budget (CPU, synthetic objects) -> results/convergence/, weights -> weights/convergence/ (about 25 min on 2 cores)
	$(PY) -m harness run experiments/convergence.yaml --ship-weights

view-generalization: $(STAMP)  ## the convergence models (shipped weights) evaluated with N = 1..12 input views -> results/view_generalization/
	$(PY) -m harness run experiments/view_generalization.yaml

depth-study: $(STAMP)  ## LVSM depth ablations (enc-dec split, decoder-only depth) at the convergence scale -> results/depth_study/ (about 35 min)
	$(PY) -m harness run experiments/depth_study.yaml

camera-encoding: $(STAMP)  ## Plücker rays vs PRoPE vs GTA for every variant offering them x 2 seeds, convergence scale; then N = 1..12 and a rigid move of the world on its checkpoints, and the encodings' latency over N -> results/camera_encoding/ (about 12 h on 2 cores; resumable)
	$(PY) -m harness run experiments/camera_encoding.yaml
	$(PY) -m harness run experiments/camera_encoding_views.yaml
	$(PY) -m harness run experiments/camera_encoding_cost.yaml $(preset_flag)

ablations: $(STAMP)  ## Efficient-LVSM ablation arms x 2 seeds (REPA needs REPA_TEACHER_WEIGHTS=) -> results/ablations/ (about 1-2 h on 2 cores)
	$(PY) -m harness run experiments/ablations.yaml

OBJECTS_DIR ?=
OBJECTS_SET ?= gso
OBJECTS_FORMAT ?= lvsm_json
table-objects: $(STAMP)  ## object-level table on a folder of posed renders (OBJECTS_DIR=, OBJECTS_SET=gso|abo, OBJECTS_FORMAT=lvsm_json|transforms_json|opencv_cameras, CHECKPOINTS=)
	OBJECTS_DIR="$(OBJECTS_DIR)" $(PY) -m harness run experiments/table_objects.yaml --set card_table=objects_$(OBJECTS_SET) --set data.source=$(OBJECTS_FORMAT) $(foreach c,$(CHECKPOINTS),--checkpoint $(c)) $(if $(SCENES),--set data.max_scenes=$(SCENES)) $(preset_flag)

paper: $(STAMP)  ## every paper study that fits this machine (others skipped with one line each), then results/README.md and the site
	$(PY) -m harness paper
	$(PY) -m harness site

reports: $(STAMP)  ## every recorded experiment's report.json, tables and figures rebuilt from its rows (nothing measured), then the index and the site
	$(PY) -m harness paper --from-records
	$(PY) -m harness site

site: $(STAMP)  ## static HTML pages of every table, plot and render recorded (no measurement) -> results/site/index.html
	$(PY) -m harness site

OFFICIAL_LVSM ?=
OFFICIAL_EFFICIENT_LVSM ?=
PARITY_SCENE ?=
parity: $(STAMP)  ## beside the official code (OFFICIAL_LVSM=DIR OFFICIAL_EFFICIENT_LVSM=DIR OFFICIAL_LACT=DIR [PARITY_SCENE=DIR]): renders, FLOPs, latency, data loader -> results/parity/
	$(PY) -m pip install -q -e '.[parity]'
	OFFICIAL_LVSM="$(OFFICIAL_LVSM)" OFFICIAL_EFFICIENT_LVSM="$(OFFICIAL_EFFICIENT_LVSM)" OFFICIAL_LACT="$(OFFICIAL_LACT)" PARITY_SCENE="$(PARITY_SCENE)" $(PY) -m harness run experiments/parity.yaml

op-profile: $(STAMP)  ## torch.profiler top ops and bytes copied per forward, per variant, beside the official code's -> results/op_profile/
	$(PY) -m harness run experiments/op_profile.yaml
