# Entry points that work on a fresh machine: `make test` and `make demo` (see README.md).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SHARED ?= ../shared/data

.PHONY: test demo install browser bench default-model clean light-check

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,train]'
	touch $(STAMP)

# The light install (`pip install realface`: ONNX Runtime, no PyTorch) in its own venv, checked on a real face.
LIGHT := .venv-light
LIGHT_FACE ?= $(SHARED)/dfdc/faces/aabqyygbaa.jpg
light-check:
	test -x $(LIGHT)/bin/python || $(PYTHON) -m venv $(LIGHT)
	$(LIGHT)/bin/pip install -q --upgrade pip
	$(LIGHT)/bin/pip install -q -c constraints.txt .
	$(LIGHT)/bin/python -c "import importlib.util as u, sys; sys.exit('torch is installed in the light venv' if u.find_spec('torch') else 0)"
	cd /tmp && $(CURDIR)/$(LIGHT)/bin/realface detect $(abspath $(LIGHT_FACE)) --no-progress

install: $(STAMP)

# Debian's Chromium and its driver for the browser test of the web page (skipped with a reason if absent).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
		  echo "could not install chromium: the browser test will be skipped"; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/realface detect $(SHARED)/ffpp-videos --frames 16 --heatmap runs/demo-heatmaps

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_faces.py
	$(BIN)/python benchmarks/bench_pretrain.py
	$(BIN)/python benchmarks/bench_detectors.py
	$(BIN)/python benchmarks/bench_detect.py
	$(BIN)/python benchmarks/bench_serve.py --shipped

default-model: $(STAMP)
	$(BIN)/realface recipe cpu --shared $(SHARED)

clean:
	rm -rf runs build dist src/*.egg-info $(LIGHT)
