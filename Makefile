# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export GEM_HOME ?= $(CURDIR)/data
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
ifdef CORPUS
export GEM_CORPUS := $(CORPUS)
endif

.PHONY: install run test test-slow bench ui clean

install: $(STAMP)

# torch is pinned to the CPU build first: an unpinned torch can resolve to a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade "pip>=24"
	$(PY) -m pip install -qq "torch==2.13.0"
	$(PY) -m pip install -qq -e ".[dev,bench,dist]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m gem_assets.run

# the suite (<= 10 minutes on 2 cores); the minutes-long end-to-end tests are marked slow and run apart
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/clustering.py --write docs/benchmarks.md
	$(PY) benchmarks/student.py --write docs/benchmarks.md
	$(PY) benchmarks/taxonomy.py --write docs/benchmarks.md
	$(PY) benchmarks/regmix.py --write docs/benchmarks.md
	$(PY) benchmarks/proxy.py --write docs/benchmarks.md
	$(PY) benchmarks/ngram.py --write docs/benchmarks.md
	$(PY) benchmarks/size_skew.py --write docs/benchmarks.md

# webserver + daemon over the instance make run records into ($GEM_STATE/dagster; GEM_STATE defaults
# to a local GEM_HOME) and the code location of workspace.yaml (the one make run's driver asks)
ui: $(STAMP)
	DAGSTER_HOME=$$($(PY) -m gem_assets.run --dagster-home) && export DAGSTER_HOME && \
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean:
	rm -rf $(VENV)
