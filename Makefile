# toylab: every target makes its own virtual environment and installs what it needs.
#   make book   - the main job: check the shipped models, build the textbook (HTML, offline), screenshot-check it
#   make test   - the test suite (library tests, graded exercises against the solutions, notebooks)
#   make models - retrain every canonical model into toylab/models (a few minutes on a laptop CPU)
#   make bench  - the benchmarks

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip -q --disable-pip-version-check

.PHONY: book test models bench clean

# torch first, pinned: the CPU build lies on these machines; an unpinned torch would pull GBs of CUDA.
$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	touch $@

$(VENV)/.test: $(VENV)/.torch pyproject.toml
	$(PIP) install -e ".[test]"
	touch $@

$(VENV)/.book: $(VENV)/.test
	$(PIP) install -e ".[book,test]"
	touch $@

book: $(VENV)/.book
	$(PY) -m toylab.cli models
	bash .ci/book.sh $(PY)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	$(PY) .ci/check_book.py chapters/_build/html chapters/_build/screenshots

test: $(VENV)/.test
	$(PY) -m pytest

models: $(VENV)/.torch $(VENV)/.test
	$(PY) -m toylab.cli train --all --out-dir toylab/models

bench: $(VENV)/.test
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf $(VENV) chapters/_build
