# toylab: every target makes its own virtual environment and installs what it needs.
#   make book   - the main job: check the shipped models, build the textbook (HTML, offline), screenshot-check it
#   make test   - the test suite (library tests, graded exercises against the solutions), then the
#                 chapter notebooks re-executed by nbval and compared with their stored outputs
#   make test-recipes - the induction recipes retrained whole at other seeds (minutes; CI runs it)
#   make models - retrain every canonical model into toylab/models (minutes; one preset per core at a time)
#   make bench  - the benchmarks (with the TransformerLens comparison: make bench-tl)
#   make test-peer - cross-check against TransformerLens 3.9.0, in its own environment .venv-tl,
#                 and the chapter that crosses over to it (TL_NOTEBOOKS) under nbval there
#   make test-mutants - plausible wrong answers (tools/mutants/) against the graded tests: caught %, named %
#   make lab    - JupyterLab on chapters/ with the .venv kernel, for self-study (LAB_ARGS=--no-browser ...)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip -q --disable-pip-version-check

VENV_TL := .venv-tl
PY_TL   := $(VENV_TL)/bin/python

.PHONY: book test test-mutants test-recipes test-kernels models bench bench-tl test-peer clean lab test-lab

# Compiled bytecode is cached, in one folder inside the venv. uv installs no .pyc files, and where
# PYTHONDONTWRITEBYTECODE is set (as on CI machines) none would ever be written: every Python process
# (test worker, notebook kernel, grading run) would compile torch's sources again, about 2 s each.
# Compiling all of site-packages at install time instead costs more than it saves (27 s here).
unexport PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX ?= $(abspath $(VENV))/pycache

# torch first, pinned: the CPU build lies on these machines, in a wheel folder of pip's configuration;
# an unpinned torch would pull GBs of CUDA. uv (installed into the venv first, if it can be had) does
# not read pip's configuration, so it installs torch only from that very wheel file, found here; where
# there is none, or without uv, pip installs the pin. Then uv (or pip) installs the rest: torch,
# already there, satisfies the requirement and is kept. uv is handed pip's extra indexes and wheel
# folders and merges indexes the way pip does. INSTALLER=pip forces pip throughout.
TORCH_VERSION = 2.13.0
INSTALLER    ?= auto
PIP_CFG       = $(strip $(shell $(PYTHON) -m pip config get global.$(1) 2>/dev/null))
WHEEL_DIRS    = $(PIP_FIND_LINKS) $(call PIP_CFG,find-links)
PY_TAG       := $(shell $(PYTHON) -c 'import sys; print("cp%d%d" % sys.version_info[:2])' 2>/dev/null)
TORCH_WHEEL   = $(firstword $(foreach d,$(WHEEL_DIRS),$(wildcard $(d)/torch-$(TORCH_VERSION)*-$(PY_TAG)-*$(shell uname -m).whl)))
UV_PIP_FLAGS  = --index-strategy unsafe-best-match \
                $(foreach u,$(call PIP_CFG,extra-index-url),--extra-index-url $(u)) \
                $(foreach u,$(WHEEL_DIRS),--find-links $(u))
comma := ,
# $(call install,UV_ARGS,PIP_ARGS): uv pip install UV_ARGS where uv is in the venv, else pip install PIP_ARGS
define install
	if [ "$(INSTALLER)" != pip ] && [ -x $(VENV)/bin/uv ]; then \
	    $(VENV)/bin/uv pip install -q --python $(PY) $(UV_PIP_FLAGS) $(1); \
	else $(PIP) install $(2); fi
endef

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	if [ "$(INSTALLER)" != pip ]; then $(PIP) install uv >/dev/null 2>&1 || echo "uv is not available: using pip"; fi
	$(if $(TORCH_WHEEL),$(call install,"$(TORCH_WHEEL)",torch==$(TORCH_VERSION)),$(PIP) install torch==$(TORCH_VERSION))
	touch $@

$(VENV)/.test: $(VENV)/.torch pyproject.toml
	$(call install,-e ".[test]",-e ".[test]")
	touch $@

$(VENV)/.book: $(VENV)/.test
	$(call install,-e ".[book$(comma)test]",-e ".[book$(comma)test]")
	touch $@

# The chapters in TL_NOTEBOOKS name the kernel "toylab-tl": .ci/book.sh registers it for .venv-tl
book: $(VENV)/.book $(VENV_TL)/.installed
	$(PY) -m toylab.cli models
	$(PY) .ci/check_text.py   # no project jargon, stale toylab names, dead page links, undefined names or stale cross-references
	TL_PYTHON=$(abspath $(PY_TL)) bash .ci/book.sh $(PY)
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
	$(PY) .ci/check_book.py chapters/_build/html chapters/_build/screenshots

# The chapters that need TransformerLens run in .venv-tl (make test-peer, and the book's
# "toylab-tl" kernel), not in .venv: `make test` and test-kernels leave them out.
TL_NOTEBOOKS := chapters/ch14_crossing_over.ipynb
NOTEBOOKS := $(filter-out $(TL_NOTEBOOKS),$(wildcard chapters/ch*.ipynb))
# pytest-xdist workers: one per core (JOBS=1 runs everything in one process). Notebooks are
# distributed whole (--dist loadfile): a notebook's cells run in order in one kernel.
JOBS   ?= auto
# A kernel gets 300 s to start (nbval's default is 60): on a machine loaded with other work (CI
# builds the book beside the kernel passes; a student's laptop runs other programs) a kernel can
# take minutes to answer, and a kernel that is late fails every cell of its notebook.
# .ci/book_execute.py gives the book's kernels the same time.
KERNEL_STARTUP_TIMEOUT ?= 300
NBVAL_OPTS = --nbval --nbval-current-env --nbval-sanitize-with chapters/nbval_sanitize.cfg \
             --nbval-kernel-startup-timeout $(KERNEL_STARTUP_TIMEOUT)
NBVAL   = $(NBVAL_OPTS) -n $(JOBS) --dist loadfile

# The suite and the notebooks in one run, so neither waits for the other's last worker. It is
# distributed a module (or a notebook) at a time, --dist loadscope: a notebook's cells run in
# order in one kernel, and a module-scoped fixture is built once, not once per worker
# (test_grading's grading runs were each made twice). The notebooks come first: they are the
# longest units, and a long unit started last keeps one core busy alone at the end.
test: $(VENV)/.test
	$(PY) -m pytest -n $(JOBS) --dist loadscope -m "not recipes" $(if $(NOTEBOOKS),$(NBVAL_OPTS) $(NOTEBOOKS)) tests

# The mutant harness: each chapter's graded tests on the solutions with one function replaced by a
# plausible wrong answer (tools/mutants/chNN_*.py); prints per chapter the share caught and the share
# of failure messages that name the mistake. One pytest process per chapter, single-threaded.
test-mutants: $(VENV)/.test
	$(PY) tools/mutants/run.py --min-caught 0.97 --min-named 0.80

# The recipe checks: the induction presets retrained whole at other seeds still meet their bounds
# (minutes of training; CI runs them after `make test`). They matter when a recipe or the training
# code changes; `make test` checks the shipped models themselves and the first steps of each recipe.
test-recipes: $(VENV)/.test
	$(PY) -m pytest -p no:cacheprovider -n $(JOBS) -m recipes \
	  || { rc=$$?; [ $$rc -ne 5 ] || echo "pytest collected no recipe tests" >&2; exit $$rc; }

# The parts of the suite whose printed or compared numbers could depend on the CPU's kernels,
# once more with the kernels that ATEN_CPU_CAPABILITY selects (.ci/run: CAP=default, torch's
# generic kernels; CAP=avx2 as well on an AVX-512 CPU): the shipped models' prefix check, the
# training determinism tests, and every chapter under nbval (chapter 4 trains live). The tests that
# the prefix check catches real changes (seed, lr, schedule) are not rerun: those changes move the
# weights by hundreds of tolerance units, whatever the kernels.
CAP ?= default
test-kernels: $(VENV)/.test
	$(if $(NOTEBOOKS),,$(error test-kernels: no chapter notebooks found in chapters/))
	@got=$$(ATEN_CPU_CAPABILITY=$(CAP) $(PY) -c "import torch; print(torch.backends.cpu.get_cpu_capability())"); \
	  [ "$$got" = "$$(echo $(CAP) | tr a-z A-Z)" ] || { echo "torch runs $$got kernels, not ATEN_CPU_CAPABILITY=$(CAP)" >&2; exit 1; }
	ATEN_CPU_CAPABILITY=$(CAP) $(PY) -m pytest -p no:cacheprovider -n $(JOBS) -m "not slow" -k "not catches_real_changes" \
	  tests/test_shipped_models.py tests/test_train.py \
	  || { rc=$$?; [ $$rc -ne 5 ] || echo "pytest collected no tests" >&2; exit $$rc; }
	ATEN_CPU_CAPABILITY=$(CAP) $(PY) -m pytest -p no:cacheprovider $(NBVAL) $(NOTEBOOKS) \
	  || { rc=$$?; [ $$rc -ne 5 ] || echo "pytest collected no notebook cells" >&2; exit $$rc; }

# JupyterLab from PyPI into .venv (the `lab` extra; torch is already pinned there, and nothing in
# the extra depends on it). The kernel spec "python3" is written into .venv/share/jupyter and
# JUPYTER_PATH puts that folder first, so a notebook opened in the lab runs in .venv (where
# toylab is installed) even when the user has another "python3" kernel registered.
LAB_JUPYTER_PATH = $(abspath $(VENV))/share/jupyter
LAB_ARGS ?=   # e.g. make lab LAB_ARGS="--no-browser --port 8899"

$(VENV)/.lab: $(VENV)/.test
	$(PIP) install -e ".[lab]"
	$(PY) -m ipykernel install --prefix $(VENV) --name python3 --display-name "Python 3 (toylab .venv)" >/dev/null
	touch $@

lab: $(VENV)/.lab
	JUPYTER_PATH=$(LAB_JUPYTER_PATH) $(VENV)/bin/jupyter lab --notebook-dir=chapters \
	    --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate --LabApp.news_url=None \
	    --LabApp.extension_manager=readonly $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# CI: install the lab extra and check that the lab starts and runs a chapter (tests/test_lab.py).
test-lab: $(VENV)/.lab
	$(PY) -m pytest -p no:cacheprovider tests/test_lab.py

# presets trained at a time, each in its own process on one thread: the checkpoints are the same for any count
MODEL_JOBS ?= auto
models: $(VENV)/.torch $(VENV)/.test
	$(PY) -m toylab.cli train --all --out-dir toylab/models --jobs $(MODEL_JOBS)
	for p in $$($(PY) -c "from toylab.training.presets import SHIPPED_SUITE; print(*SHIPPED_SUITE)"); do \
	  $(PY) -m toylab.cli train $$p --out toylab/models/$$p.pt --quiet || exit 1; done

bench: $(VENV)/.test
	$(PY) benchmarks/bench_train.py

# TransformerLens 3.9.0 (the 4.x line dropped HookedTransformer), with torch pinned first; ~1.3 GB.
# toylab's own dependencies that TransformerLens does not bring (matplotlib), and nbval, ipykernel
# and nbclient for the chapters that run here (TL_NOTEBOOKS).
$(VENV_TL)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_TL)
	$(VENV_TL)/bin/pip -q --disable-pip-version-check install torch==$(TORCH_VERSION)
	$(VENV_TL)/bin/pip -q --disable-pip-version-check install transformer-lens==3.9.0 pytest \
	    "matplotlib>=3.7" "nbval>=0.11" "ipykernel>=6" "nbclient>=0.8"
	$(VENV_TL)/bin/pip -q --disable-pip-version-check install --no-deps -e .
	touch $@

bench-tl: $(VENV_TL)/.installed
	$(PY_TL) benchmarks/bench_train.py

# The peer tests, then the TransformerLens chapters under nbval with this CPU's kernels and
# with torch's generic ones (the other chapters get both passes in test and test-kernels).
test-peer: $(VENV_TL)/.installed
	$(PY_TL) -m pytest -p no:cacheprovider tests/test_peer_transformerlens.py
	$(PY_TL) -m pytest -p no:cacheprovider $(NBVAL_OPTS) $(TL_NOTEBOOKS)
	ATEN_CPU_CAPABILITY=default $(PY_TL) -m pytest -p no:cacheprovider $(NBVAL_OPTS) $(TL_NOTEBOOKS)

clean:
	rm -rf $(VENV) $(VENV_TL) chapters/_build
