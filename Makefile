# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv (if needed), installs preflab into it, then runs.
#
# TORCH_SPEC pins the PyTorch wheel that the install takes. The default, torch==2.13.0, is an
# ordinary PyPI release (CPU build where one is on hand, the platform's default build
# elsewhere); override it to use another, e.g. `make demo TORCH_SPEC='torch>=2.6'`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.preflab-installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing preflab into $(VENV) (PyTorch: $(TORCH_SPEC)) ..."
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]" "$(TORCH_SPEC)"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/preflab demo --output-dir demo $(DEMO_FLAGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/sft_throughput.py

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache
