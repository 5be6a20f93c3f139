# Two commands for a newcomer: `make train` (the embedded training run) and `make test`.
# Both create or reuse .venv and install what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test lint install

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, from its CPU wheel; the constraints file then keeps it there.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

train: $(STAMP)
	$(BIN)/riskpo-train $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest
