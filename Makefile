# organbench: every target sets up the venv first, so a fresh clone needs no manual step.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= cpu
METHODS ?=
SEEDS ?=
DATA ?=
RUN_ARGS = --profile $(PROFILE) $(if $(METHODS),--methods $(METHODS)) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(DATA),--data $(DATA))

.PHONY: setup test bench table2 list-methods clean-reports

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m pytest -q tests/bench --benchmark-enable --benchmark-only --benchmark-autosave \
		--benchmark-columns=median,iqr,mean,rounds

list-methods: setup
	$(PY) -m benchmarks list-methods

table2: setup
	$(PY) -m benchmarks run table2 $(RUN_ARGS)
	$(PY) -m benchmarks report table2 --profile $(PROFILE)

clean-reports:
	rm -rf reports/out
