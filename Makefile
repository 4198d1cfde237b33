# The README's two commands: `make demo` and `make test`. Both install first, into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# the CPU build of PyTorch; a plain `torch` requirement could pull a multi-GB CUDA build
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
DEMO_DIR ?= data/demo
DEMO_HOURS ?= 1
DEMO_RUN ?= runs/demo

.PHONY: install test demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/bestrq synth --out $(DEMO_DIR) --hours $(DEMO_HOURS) --seed 0
	$(VENV)/bin/bestrq pretrain --config bestrq_tiny --set data.corpus=$(DEMO_DIR) --out $(DEMO_RUN)

bench: install
	$(PY) bench/bench_bestrq.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
