# The README's two commands: `make demo` and `make test`. Both install first, into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# the CPU build of PyTorch; a plain `torch` requirement could pull a multi-GB CUDA build
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
# `make demo`: the whole study at toy scale (under 45 min on 2 cores); `make demo QUICK=1`: a
# smaller corpus and budgets (under 8 min), to see every step work
ifeq ($(QUICK),1)
DEMO_DIR ?= data/demo_quick
DEMO_HOURS ?= 0.25
DEMO_RUN ?= runs/demo_quick
PRETRAIN_MINUTES ?= 1
PROBE_ARGS ?= --epochs 3 --asr-hidden 64 --max-minutes 0.3
else
DEMO_DIR ?= data/demo
DEMO_HOURS ?= 1
DEMO_RUN ?= runs/demo
PRETRAIN_MINUTES ?= 9
PROBE_ARGS ?= --epochs 12 --asr-hidden 128 --max-minutes 3
endif
BESTRQ := $(VENV)/bin/bestrq

.PHONY: install test test-floor demo study recorded bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q

# the tests on the lowest version of every dependency pyproject.toml allows (torch 2.4, numpy 1.24,
# transformers 4.44, ...: uv's lowest-direct resolution), in a venv of their own; not part of CI:
# PyPI's Linux torch 2.4 is a CUDA build, about 3 GB to download. `make test-floor PYTHON=python3.10`:
# also the lowest Python
FLOOR_VENV ?= .venv-floor
test-floor:
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install -q uv
	$(FLOOR_VENV)/bin/uv pip install -q --python $(FLOOR_VENV)/bin/python --resolution lowest-direct -e ".[test]"
	$(FLOOR_VENV)/bin/python -m pytest -q

# synthesise; pre-train BEST-RQ and wav2vec 2.0 for the same wall time; probe them, a random
# init and the fbank on the four tasks; write the report and print its table
demo: install
	$(BESTRQ) synth --out $(DEMO_DIR) --hours $(DEMO_HOURS) --seed 0
	$(BESTRQ) pretrain --config bestrq_tiny --set data.corpus=$(DEMO_DIR) --set train.max_minutes=$(PRETRAIN_MINUTES) --out $(DEMO_RUN)/bestrq
	$(BESTRQ) pretrain --config wav2vec2_tiny --set data.corpus=$(DEMO_DIR) --set train.max_minutes=$(PRETRAIN_MINUTES) --out $(DEMO_RUN)/wav2vec2
	$(BESTRQ) probe --checkpoint $(DEMO_RUN)/bestrq --data $(DEMO_DIR) --out $(DEMO_RUN)/bestrq/probes $(PROBE_ARGS)
	$(BESTRQ) probe --checkpoint $(DEMO_RUN)/wav2vec2 --data $(DEMO_DIR) --out $(DEMO_RUN)/wav2vec2/probes $(PROBE_ARGS)
	$(BESTRQ) probe --checkpoint random:bestrq_tiny --data $(DEMO_DIR) --out $(DEMO_RUN)/random $(PROBE_ARGS)
	$(BESTRQ) probe --checkpoint fbank --data $(DEMO_DIR) --out $(DEMO_RUN)/fbank $(PROBE_ARGS)
	$(BESTRQ) report $(DEMO_RUN)/bestrq $(DEMO_RUN)/wav2vec2 $(DEMO_RUN)/random $(DEMO_RUN)/fbank --out $(DEMO_RUN)/report

# the study: BEST-RQ against wav2vec 2.0 at equal updates, 3 pre-training runs of each, intervals on
# every figure (hours on 2 cores, nothing else running: docs/study/README.md); the same command resumes
# after a stop. The default preset's results go to docs/study (the published ones), and its record
# (the small files they come from) to docs/study/record: committed, the same command resumes the study
# on another machine. Then the docs' verdicts blocks are rewritten from the published results.
# `make study STUDY=study_quick`: every stage in a minute.
# `make study STUDY=study_recorded`: the study on recorded voices (fetched and prepared first, into
# data/recorded), published to docs/study/recorded, its record in docs/study/recorded/record.
STUDY ?= study
PUBLISHED := $(if $(filter study,$(STUDY)),docs/study,$(if $(filter study_recorded,$(STUDY)),docs/study/recorded))
STUDY_ARGS ?= $(if $(PUBLISHED),--set publish=$(PUBLISHED) --set record=$(PUBLISHED)/record)

study: install $(if $(filter study_recorded,$(STUDY)),recorded)
	$(BESTRQ) study --config $(STUDY) $(STUDY_ARGS)
	$(if $(PUBLISHED),$(BESTRQ) report --fill README.md docs/study/README.md docs/results.md)

# recorded human speech from Debian's packages (docs/data.md): fetched into data/debs, kept there
recorded: install
	$(BESTRQ) prepare recorded data/debs --out data/recorded

# SpeechBrain (a peer in the speed benchmark) without its dependencies: they pin a torchaudio
# that needs another torch build, and the modules the benchmark uses are pure PyTorch
SB_PEER ?= speechbrain==1.1.2 hyperpyyaml==1.2.3 ruamel.yaml
BENCH_ARGS ?=

bench: install
	$(PY) -m pip install -q --no-deps $(SB_PEER)
	test -f $(DEMO_DIR)/cuts_train.jsonl.gz || $(VENV)/bin/bestrq synth --out $(DEMO_DIR) --hours $(DEMO_HOURS) --seed 0
	$(PY) bench/bench_bestrq.py
	$(BESTRQ) bench $(BENCH_ARGS)
	$(PY) -m pytest -q --benchmarks -m benchmark

clean:
	rm -rf $(VENV) $(FLOOR_VENV) build *.egg-info src/*.egg-info
