# Two entry points that work on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SHARED ?= ../shared/data

.PHONY: test demo install bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/realface preprocess $(SHARED)/ffpp-videos/manifest.csv --out runs/demo-faces --frames 8

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_faces.py

clean:
	rm -rf runs build dist src/*.egg-info
