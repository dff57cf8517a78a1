# audiolab: `make train` (main job on built-in data) and `make test` are all a fresh
# machine needs; both install first (once; again only when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install train test test-fast lint clean-outputs

help:
	@echo "make install        create .venv, install ffmpeg (apt, when root) and audiolab[dev]"
	@echo "make train          train the default job (CREPE tiny on synthetic tones); ARGS='key=value ...'"
	@echo "make test           run the whole test suite (slow tests included)"
	@echo "make test-fast      skip tests marked slow"
	@echo "make lint           ruff"

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install_system_deps.sh
	@bash scripts/install_system_deps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade "pip>=24"
	$(BIN)/python -m pip install -e ".[dev]"
	@touch $(STAMP)

train: install
	$(BIN)/python src/train.py $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests scripts

clean-outputs:
	find outputs -mindepth 1 -not -name .gitkeep -delete
