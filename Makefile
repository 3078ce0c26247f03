# The README's two commands: `make demo` (whole pipeline on SynthFaces) and `make test`.
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned to a release with a CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
DATA   ?= data/synthfaces
MODEL  ?= runs/demo
N      ?= 20000
PRESET ?= synth64
# The Chromium the browser test drives (Debian's package by default).
CHROMIUM ?= /usr/bin/chromium

export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export T2I_CHROMIUM=$(CHROMIUM)
# Idle OpenMP threads sleep instead of spinning: test subprocesses share 2 cores with pytest.
test test-slow: export OMP_WAIT_POLICY=PASSIVE

.PHONY: demo test test-slow bench gpu-check lint install browser clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

# Headless Chromium for the web-demo test (no browser download). The browser test fails
# without it (it never skips). In CI (CI=true) this installs Debian's package and stops loudly
# if that fails; elsewhere it never runs apt: it says what to install and stops.
browser:
	@if [ -x "$(CHROMIUM)" ]; then exit 0; fi; \
	if [ -n "$$CI" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
		test -x "$(CHROMIUM)" || { echo "error: $(CHROMIUM) is missing after installing Debian's chromium package"; exit 1; }; \
	else \
		echo "make test: the web-demo browser test needs Chromium at $(CHROMIUM), which is missing. Either"; \
		echo "    sudo apt-get install chromium                   # Debian's package (/usr/bin/chromium)"; \
		echo "or point it at a Chromium you have (no root needed):"; \
		echo "    make test CHROMIUM=/path/to/chromium"; \
		echo "or run the suite without that one test:"; \
		echo "    $(BIN)/python -m pytest -q --deselect tests/test_app_browser.py"; \
		exit 1; \
	fi

demo: install
	$(BIN)/t2i data synth --out $(DATA) --n $(N) --seed 0
	$(BIN)/t2i data show --data $(DATA) --out $(MODEL)/samples/data_grid.png --n 16
	$(BIN)/t2i train all --data $(DATA) --out $(MODEL) --preset $(PRESET)
	$(BIN)/t2i generate --model $(MODEL) --grid-prompts --out $(MODEL)/samples

test: install browser
	$(BIN)/python -m pytest -q

test-slow: install browser
	$(BIN)/python -m pytest -q -m slow

bench: install
	$(BIN)/python bench/unet.py
	$(BIN)/python bench/pipeline.py --model $(MODEL)
	$(BIN)/python bench/data.py --data $(DATA)

# One command for a short GPU window (under 8 minutes on one CUDA GPU): CUDA tests, UNet and
# pipeline benchmarks beside diffusers, the celeba128 recipe, torchrun. DRY=1: the same on the CPU
# with tiny sizes. It installs nothing (a GPU machine brings its own CUDA torch): the project's
# venv if there is one, else $(PY) with t2i's dependencies and the [dev] extra.
GPU_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY))
gpu-check:
	PYTHONPATH=src $(GPU_PY) bench/gpu_check.py $(if $(DRY),--dry-run) $(GPU_CHECK_ARGS)

lint: install
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) runs data
