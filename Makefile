# The two commands of README.md. Both create .venv on first use
# (tools/setup_env.sh: torch, mmengine, mmcv built with its ops, mmdet,
# pycocotools, this package in editable mode) and reuse it afterwards.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: env test lint format demo smoke-coco gpu-bundle clean

env:
	@PYTHON=$(PYTHON) tools/setup_env.sh $(VENV)

test: env
	$(PY) -m pytest tests

# Style as mmdet's pre-commit: flake8's rules (ruff, ruff.toml), isort and yapf
# (setup.cfg). `make format` applies isort and yapf.
LINTED := mixaq_mmdet tools tests benchmarks configs setup.py
lint: env
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/isort --check-only --diff $(LINTED)
	$(VENV)/bin/yapf --diff --recursive --parallel $(LINTED)

format: env
	$(VENV)/bin/isort $(LINTED)
	$(VENV)/bin/yapf --in-place --recursive --parallel $(LINTED)

# Two runs side by side: about 1.5x the work of one run on 2 CPU cores.
JOBS ?= 2
demo: env
	$(PY) tools/run_demo.py --jobs $(JOBS)

# The COCO table and every configs/mixaq/ config at full size on a COCO-layout fixture (CPU).
smoke-coco: env
	$(PY) tools/smoke_coco.py

# What tools/gpu_check.sh needs on a borrowed GPU machine without network: the
# wheels its image lacks, mmcv's sdist, this project; under 60 MiB (downloads).
BUNDLE ?= work_dirs/gpu_bundle
gpu-bundle: env
	PYTHON=$(PY) tools/make_gpu_bundle.sh $(BUNDLE)

clean:
	rm -rf work_dirs/demo
