# Two entry points for a new machine (each does its own set-up from nothing):
#   make run    -> the main job: the default simulated phase diagram (figures/ + results)
#   make test   -> the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-all bench lint clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(PY) -m phase_diagrams simulate --out figures

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ""

bench: setup
	$(PY) -m benchmarks.simulator

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) figures out
