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

export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
# Idle OpenMP threads sleep instead of spinning: test subprocesses share 2 cores with pytest.
test test-slow: export OMP_WAIT_POLICY=PASSIVE

.PHONY: demo test test-slow bench lint install browser clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,app]"
	touch $@

install: $(BIN)/.installed

# Headless Chromium for the web-demo test (Debian package; no browser download).
# Without it the browser test fails (it never skips), so a failed install stops here.
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	@test -x /usr/bin/chromium || (echo "error: /usr/bin/chromium is missing; install Debian's chromium package" && false)

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

lint: install
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) runs data
