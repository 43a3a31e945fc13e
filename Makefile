# Entry points of the README's quickstart. Each target creates .venv on first use, so a fresh clone
# needs nothing but Python >= 3.11 and make. Dependencies come from requirements-dev.lock (exact
# versions with hashes: the same install on every machine); `make lock` regenerates both lock files
# after a change to pyproject.toml's dependencies.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: dev test lint typecheck lock venv ts-check

dev: $(VENV)/.installed
	$(BIN)/taskapi dev

# .venv alone, e.g. to run .venv/bin/taskapi token before make dev.
venv: $(VENV)/.installed

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy --strict api bench
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .

# The generated TypeScript client against a `taskapi dev` of its own (needs node and npm; clients/typescript).
ts-check: $(VENV)/.installed
	clients/typescript/run

typecheck: $(VENV)/.installed
	$(BIN)/mypy --strict api bench

$(VENV)/.installed: pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# requirements.lock: what the image installs (runtime only); requirements-dev.lock: + the dev and test extras.
lock:
	$(PYTHON) -m venv /tmp/taskapi-lock-venv
	/tmp/taskapi-lock-venv/bin/pip install --quiet pip-tools
	/tmp/taskapi-lock-venv/bin/pip-compile -q --strip-extras --generate-hashes --allow-unsafe -o requirements.lock pyproject.toml
	/tmp/taskapi-lock-venv/bin/pip-compile -q --strip-extras --generate-hashes --allow-unsafe --extra dev --extra test \
		-o requirements-dev.lock pyproject.toml
