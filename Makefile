# The two commands of README.md. Both create .venv on first use
# (tools/setup_env.sh: torch, mmengine, mmcv built with its ops, mmdet,
# pycocotools, this package in editable mode) and reuse it afterwards.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: env test demo smoke-coco clean

env:
	@PYTHON=$(PYTHON) tools/setup_env.sh $(VENV)

test: env
	$(PY) -m pytest tests

demo: env
	$(PY) tools/run_demo.py

# The COCO table and every configs/mixaq/ config at full size on a COCO-layout fixture (CPU).
smoke-coco: env
	$(PY) tools/smoke_coco.py

clean:
	rm -rf work_dirs/demo
