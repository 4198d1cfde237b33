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

# SpeechBrain (a peer in the speed benchmark) without its dependencies: they pin a torchaudio
# that needs another torch build, and the modules the benchmark uses are pure PyTorch
SB_PEER ?= speechbrain==1.1.2 hyperpyyaml==1.2.3 ruamel.yaml
BENCH_ARGS ?=

bench: install
	$(PY) -m pip install -q --no-deps $(SB_PEER)
	test -f $(DEMO_DIR)/cuts_train.jsonl.gz || $(VENV)/bin/bestrq synth --out $(DEMO_DIR) --hours $(DEMO_HOURS) --seed 0
	$(PY) bench/bench_bestrq.py
	$(PY) bench/pretrain_speed.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
