# llava_compare — every target sets itself up from a fresh clone (Python 3.11 + pip only).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel of torch lies on this machine's disk; pinning it first stops pip from
	# pulling a multi-GB CUDA build to satisfy torch>=2.6. On a GPU box, install your torch first.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# Synthetic data (configs/data/demo.yaml, made by stage 1 on first use) -> stage 1 -> stage 2
# -> held-out eval (printed by stage 2), all on CPU with the tiny model.
demo: $(STAMP)
	rm -rf outputs/demo/stage1 outputs/demo/stage2
	$(BIN)/python -m llava_compare.train recipe=demo_stage1 resume=never
	$(BIN)/python -m llava_compare.train recipe=demo_stage2 resume=never

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Benchmarks print numbers; they are never timed test assertions.
bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf outputs .pytest_cache
