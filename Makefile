# Two entry points for newcomers: `make demo` and `make test`. Both build .venv from this
# project's own files. torch is pinned here (CPU wheel on the CI machine); the package itself
# accepts any torch>=2.3 so GPU users install their own.
PY ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test wheel-check lint bench clean

$(BIN)/tinyscale: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[llm,serve]"
	touch $@

# The test tools come on top: the demo does not wait for them (llama-cpp-python compiles llama.cpp,
# several minutes on 2 cores).
$(VENV)/.dev: $(BIN)/tinyscale
	$(BIN)/pip install -q -e ".[dev,llm,serve]"
	touch $@

install: $(BIN)/tinyscale

demo: install
	$(BIN)/tinyscale demo

test: $(VENV)/.dev
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest

# The package as a user installs it: wheel + sdist built, the wheel installed into a fresh venv and run.
wheel-check: $(VENV)/.dev
	$(BIN)/python -m pytest -m wheel tests/test_wheel.py

bench: install
	for f in bench/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build src/*.egg-info
