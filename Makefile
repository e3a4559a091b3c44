# llava_compare — every target sets itself up from a fresh clone (Python 3.11 + pip only).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= outputs/demo

.PHONY: setup demo test clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel of torch lies on this machine's disk; pinning it first stops pip from
	# pulling a multi-GB CUDA build to satisfy torch>=2.6. On a GPU box, install your torch first.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# Synthetic data -> stage 1 -> stage 2 -> held-out eval, all on CPU with the tiny model.
demo: $(STAMP)
	$(BIN)/python -m llava_compare.demo --out $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf outputs .pytest_cache
