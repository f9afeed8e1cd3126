# The study in two commands: `make reproduce` and `make test`. Each sets itself up first.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

# Knobs (make reproduce STUDY=cifar-depth PROFILE=quick DATA=/path/to/cifar10-jpeg.tar.xz; on a CPU MINUTES=30)
STUDY   ?= degradation
PROFILE ?=
DATA    ?=
JOBS    ?=
MINUTES ?=
GPUS    ?=
PORT    ?= 5000
# make server: where it listens and what it stores (README, "On a cluster")
HOST      ?= 127.0.0.1
BACKEND   ?=
ARTIFACTS ?=
WORKERS   ?=

# A real file target: the venv is rebuilt only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

# The test extras include the cluster's, so one stamp covers both: make server inside a test installs nothing.
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test,cluster]'
	touch $@ $(VENV)/.installed-cluster

$(VENV)/.installed-cluster: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[cluster]'
	touch $@

.PHONY: help
help: ## Show this help
	@echo "Plain vs residual networks (He et al. 2015): the degradation study."
	@echo
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: STUDY=$(STUDY) PROFILE=<auto> DATA=<download> JOBS=<auto> MINUTES=<the profile's length> GPUS=<auto> PORT=$(PORT) HOST=$(HOST)"

.PHONY: setup
setup: $(VENV)/.installed ## Create .venv with the package installed (editable)

# On a cluster (README, "On a cluster"): EXECUTOR=slurm SLURM="partition=gpu time=120" RUNS_DIR=/shared/runs
# (CELLS_PER_JOB: cells each Slurm job runs at once; JOBS and GPUS are this machine's, for the local executor)
EXECUTOR      ?= local
SLURM         ?=
RUNS_DIR      ?=
CELLS_PER_JOB ?=
STUDY_ARGS = --study $(STUDY) $(if $(PROFILE),--profile $(PROFILE)) $(if $(DATA),--data $(DATA)) \
             $(if $(JOBS),--jobs $(JOBS)) $(if $(MINUTES),--minutes $(MINUTES)) $(if $(GPUS),--gpus $(GPUS)) --executor $(EXECUTOR) \
             $(if $(CELLS_PER_JOB),--cells-per-job $(CELLS_PER_JOB)) \
             $(foreach option,$(SLURM),--slurm $(option)) $(if $(RUNS_DIR),--runs-dir $(RUNS_DIR))
STUDY_VENV = $(if $(filter slurm,$(EXECUTOR)),$(VENV)/.installed-cluster,$(VENV)/.installed)

.PHONY: reproduce
reproduce: $(STUDY_VENV) ## Run the study into MLflow (GPU: degradation, full; CPU: cifar-depth, laptop), then the report
	@status=0; $(BIN)/python -m resnet.study $(STUDY_ARGS) || status=$$?; \
	if [ $$status -ne 130 ]; then $(BIN)/python -m resnet.report || { [ $$status -ne 0 ] || status=1; }; fi; \
	echo; echo "Browse the runs: $${MLFLOW_TRACKING_URI:-make ui   (MLflow on http://127.0.0.1:$(PORT))}"; exit $$status

.PHONY: plan
plan: $(VENV)/.installed ## Print what make reproduce would run on this CPU in MINUTES=N (iterations, cells at once, minutes)
	$(BIN)/python -m resnet.study $(STUDY_ARGS) --plan

# The report is a real file: rebuilt when the package changes or the store has new runs.
reports/degradation.html: $(VENV)/.installed $(shell find resnet -name '*.py' -o -name '*.j2') $(wildcard mlflow.db)
	$(BIN)/python -m resnet.report

.PHONY: report
report: reports/degradation.html ## Build reports/degradation.html from the finished runs in MLflow (no training)

.PHONY: ui
ui: $(VENV)/.installed ## Serve the MLflow UI for this project's store on 127.0.0.1 (PORT=5000)
	$(BIN)/python -m resnet.tracking.ui --port $(PORT)

.PHONY: server
server: $(VENV)/.installed-cluster ## MLflow server for a cluster: HOST=127.0.0.1 PORT=5000 BACKEND=<sqlite file> (off loopback: MLFLOW_AUTH_ADMIN_PASSWORD)
	$(BIN)/python -m resnet.tracking.server --host $(HOST) --port $(PORT) $(if $(BACKEND),--backend $(BACKEND)) \
	    $(if $(ARTIFACTS),--artifacts $(ARTIFACTS)) $(if $(WORKERS),--workers $(WORKERS))

# Debian's packages the tests run for real: Chromium renders the report in the browser test; munge,
# Slurm and PostgreSQL make the one-node cluster of the cluster tests. Installed once, here as in CI.
TEST_PACKAGES := chromium munge slurmctld slurmd slurm-client postgresql
TEST_PROGRAMS := chromium munged mungekey slurmctld slurmd sbatch squeue scancel
.PHONY: test-packages
test-packages:
	@for program in $(TEST_PROGRAMS); do command -v $$program >/dev/null 2>&1 || missing=1; done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing=1; \
	if [ -n "$$missing" ] && [ "$$(id -u)" != 0 ]; then \
	    echo "make test needs Debian's $(TEST_PACKAGES): run it as root once (it calls apt-get)," \
	         "or install them: sudo apt-get install $(TEST_PACKAGES)" >&2; exit 1; fi; \
	if [ -n "$$missing" ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_PACKAGES) >/dev/null; fi

.PHONY: lint
lint: $(VENV)/.installed-test ## Check style with ruff (lines up to 120 characters, pyflakes, import order)
	$(BIN)/ruff check resnet tests

.PHONY: test
test: lint test-packages ## Lint, then run the test suite (CPU only; about 15 minutes on 2 AVX512 cores, set-up aside; docs/usage.md)
	$(BIN)/python -m pytest

# The edit loop: the unit tests of the package's parts (config, models, engine, data, layout, report, analyses,
# tracking, samples, the plan), none of Slurm, the notebooks' studies, servers, the browser or whole training runs.
# 2 min 48 s on 2 cores of an AMD EPYC (AVX512-BF16) with two niced analyses beside it; make test runs everything.
QUICK_TESTS = tests/test_config.py tests/test_models.py tests/test_engine.py tests/test_data.py tests/test_layout.py \
	tests/test_report.py tests/test_analysis.py tests/test_tracking.py tests/test_samples.py tests/test_budget.py
QUICK_SKIP = not continue and not continues and not resume and not windows and not pool_counts

.PHONY: test-quick
test-quick: lint ## The unit tests only, for the edit loop (about 3 minutes on 2 cores; make test runs all of them)
	$(BIN)/python -m pytest -m "not slow" -k "$(QUICK_SKIP)" $(QUICK_TESTS)

.PHONY: clean
clean: ## Remove generated reports (keeps the venv, data cache and MLflow store)
	rm -rf reports/*.html reports/figures

# make bench MODE=imagenet [DATA=<ImageNet folder>]: the ImageNet input path and training per GPU, ours
# against torchvision's reference recipe (without DATA, on synthetic JPEGs of ImageNet's size).
MODE ?= cifar
.PHONY: bench
bench: $(VENV)/.installed ## Measure images/s: the source document's loop vs ours (MODELS=...; MODE=imagenet DATA=...)
	@case "$(MODE)" in \
	  cifar) $(BIN)/python -m resnet.cifar.bench $(if $(filter command line,$(origin MODELS)),--models $(MODELS)) ;; \
	  imagenet) $(BIN)/python -m resnet.imagenet.bench $(if $(DATA),--data $(DATA)) \
	      $(if $(filter command line,$(origin MODELS)),--models $(MODELS)) ;; \
	  *) echo "MODE=$(MODE): unknown; legal values: cifar, imagenet" >&2; exit 2 ;; \
	esac
