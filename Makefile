# Two commands do the whole set-up on a fresh machine:
#   make demo   # venv + install (with lmms-eval) + `vlmq quantize --demo` on the bundled model (offline)
#   make test   # venv + install + the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vlmq-installed

.PHONY: install demo test bench-cost bench-quality bench-latency

# lmms-eval goes in with --no-deps: pip cannot resolve its wandb pin together with gptqmodel; the "lmms"
# extra brings what it needs at run time (setup.py)
$(STAMP): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,bench,lmms]"
	$(PY) -m pip install --quiet --no-deps lmms-eval==0.7.3
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vlmq quantize --demo --overwrite

test: $(STAMP)
	$(PY) -m pytest -q tests

bench-cost: $(STAMP)
	$(PY) benchmarks/quant_cost.py

bench-quality: $(STAMP)
	$(PY) benchmarks/quality.py

bench-latency: $(STAMP)
	$(PY) benchmarks/linear_latency.py
