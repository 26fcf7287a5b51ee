# markguard — the two commands of the README: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOME_DIR ?= .markguard
HOST ?= 127.0.0.1
PORT ?= 3000
SHARED_DATA ?= ../shared/data

.PHONY: setup run test test-slow lint clean

# Create or update .venv. torch==2.14.1 / torchvision==0.29.1 install from this machine's local wheels.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,postgres,ray]'
	touch $@

setup: $(BIN)/.installed

# Prepare the default model and the grocery demo catalog, then serve the API on $(HOST):$(PORT).
run: setup
	$(BIN)/markguard demo --home $(HOME_DIR) --data $(SHARED_DATA) --url http://$(HOST):$(PORT)
	$(BIN)/markguard serve --home $(HOME_DIR) --host $(HOST) --port $(PORT)

# The default test run (CI calls exactly this); slow checks are `make test-slow`.
test: setup
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: setup
	$(BIN)/python -m pytest -m slow -q

lint: setup
	$(BIN)/ruff check vision training serving datasets tests

clean:
	rm -rf $(VENV) $(HOME_DIR) .pytest_cache
