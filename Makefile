# audiolab: `make train` (main job on built-in data) and `make test` are all a fresh
# machine needs; both install first (once; again only when the lock or pyproject.toml
# changes).
#
# Dependencies: pyproject.toml says what audiolab needs; requirements.lock pins the whole
# environment (every package, exact version, sha256 hashes). `make install` installs the
# lock and nothing else (pip never resolves); `make lock` is the only way the lock changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# the peers of scripts/bench_pitch.py (the bench extra), locked on top of $(LOCK)
BENCH_LOCK := requirements-bench.lock
# the locking tool, pinned so that a refresh is reproducible too
UV := uv==0.13.9
LOCK_VENV := .venv-lock

.PHONY: help install install-bench lock train test test-fast lint clean-outputs

help:
	@echo "make install        create .venv, install ffmpeg (apt, when root), the locked environment and audiolab"
	@echo "make install-bench  make install, then the pitch trackers scripts/bench_pitch.py compares (requirements-bench.lock)"
	@echo "make lock           re-resolve pyproject.toml's dependencies into requirements.lock and requirements-bench.lock (hashes included)"
	@echo "make train          train the default job (CREPE tiny on synthetic tones); ARGS='key=value ...'"
	@echo "make test           run the whole test suite (slow tests included)"
	@echo "make test-fast      skip tests marked slow"
	@echo "make lint           ruff"

install: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml setup.py scripts/install_system_deps.sh
	@bash scripts/install_system_deps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --require-hashes --no-deps -r $(LOCK)
	# compat: a plain path entry for src/, so Hydra finds the plugins in src/hydra_plugins
	$(BIN)/python -m pip install --no-deps --no-build-isolation --config-settings editable_mode=compat -e .
	$(BIN)/python -m pip check
	@touch $(STAMP)

lock:
	@test -x $(LOCK_VENV)/bin/uv || ($(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/python -m pip install -q "$(UV)")
	$(LOCK_VENV)/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--generate-hashes --no-config --output-file $(LOCK)
	# the bench extra on top: every package of $(LOCK) at the same version (constraint)
	$(LOCK_VENV)/bin/uv pip compile pyproject.toml --extra dev --extra bench --universal --python-version 3.11 \
		--generate-hashes --no-config --constraints $(LOCK) --output-file $(BENCH_LOCK)

install-bench: install
	$(BIN)/python -m pip install --require-hashes --no-deps -r $(BENCH_LOCK)
	$(BIN)/python -m pip check

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
