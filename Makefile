# organbench: every target sets up the venv first, so a fresh clone needs no manual step.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= cpu
METHODS ?=
SEEDS ?=
DATA ?=
MLFLOW_PORT ?= 5000
DATA_ARG = $(if $(DATA),--data $(DATA))
LAUNCHER ?= sequential
RUN_FLAGS ?=
RUN_ARGS = --profile $(PROFILE) $(if $(METHODS),--methods $(METHODS)) $(if $(SEEDS),--seeds $(SEEDS)) $(DATA_ARG) \
	--launcher $(LAUNCHER) $(if $(ADDRESS),--address $(ADDRESS)) $(RUN_FLAGS)

.PHONY: setup test test-fast bench list-methods new-method clean-reports mlflow mlflow-stop mlflow-status \
	table1 table2 table3 table4 table6 fig1 fig4 fig6 location-loss index reports \
	ablation-prompt ablation-lambda-c ablation-lambda-n ablation-encoder budget-check gpu-check

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q --durations=15

# Everyday tier: no servers, clusters, browsers or end-to-end studies (tests/conftest.py SLOW_MODULES)
test-fast: setup
	$(PY) -m pytest -q -m "not slow" --durations=10

bench: setup
	$(PY) -m pytest -q tests/bench --benchmark-enable --benchmark-only --benchmark-autosave \
		--benchmark-columns=median,iqr,mean,rounds

list-methods: setup
	$(PY) -m benchmarks list-methods

# A new method from the template: make new-method NAME=my_method (writes methods/NAME.py and its test)
new-method: setup
	$(PY) -m benchmarks new-method $(NAME)

# One target per paper artifact: train what is missing (finished run keys are skipped), then render.
table1 table2 table3 table4: setup
	$(PY) -m benchmarks run $@ $(RUN_ARGS)
	$(PY) -m benchmarks report $@ --profile $(PROFILE) $(DATA_ARG) $(if $(METHODS),--methods $(METHODS))
	$(PY) -m benchmarks index

# The TAK ablations (Tables 5, 7, 8, 9): variants of `tak`, rendered beside the published values.
# budget-check: every Table 2 method at B/2, B and 2B (seed 0): is the ranking a budget artefact?
ablation-prompt ablation-lambda-c ablation-lambda-n ablation-encoder budget-check: setup
	$(PY) -m benchmarks run $@ $(RUN_ARGS)
	$(PY) -m benchmarks report $@ --profile $(PROFILE) $(DATA_ARG) $(if $(METHODS),--methods $(METHODS))
	$(PY) -m benchmarks index

# Costs are counted under the paper profile unless PROFILE= is given (no data, no training, no GPU).
COST_PROFILE = $(if $(filter command line environment,$(origin PROFILE)),$(PROFILE),paper)
table6: setup
	$(PY) -m benchmarks run table6 --profile $(COST_PROFILE) $(if $(METHODS),--methods $(METHODS))
	$(PY) -m benchmarks report table6 --profile $(COST_PROFILE)
	$(PY) -m benchmarks index

fig1: table2
	$(PY) -m benchmarks data stats amos --profile $(PROFILE)
	$(PY) -m benchmarks figure fig1 --study table2 --profile $(PROFILE) $(DATA_ARG)
	$(PY) -m benchmarks index

fig6: table2
	$(PY) -m benchmarks figure fig6 --study table2 --profile $(PROFILE) $(DATA_ARG)
	$(PY) -m benchmarks index

# The cube-location loss of MagicNet, GA and TAK against the iteration, with ln(cubes) and 0.9 ln(cubes)
location-loss: table2
	$(PY) -m benchmarks figure curves --metric loss_loc --study table2 --profile $(PROFILE) $(DATA_ARG) \
		--out reports/out/location-loss
	$(PY) -m benchmarks index

fig4: table2
	$(PY) -m benchmarks figure fig4 --study table2 --profile $(PROFILE) $(DATA_ARG)
	$(PY) -m benchmarks index

index: setup
	$(PY) -m benchmarks index

# On a machine with a GPU: every method at the paper profile's patch, batch and precision (JSON).
gpu-check: setup
	$(PY) -m benchmarks gpu-check --out reports/out/gpu_check.json

reports: table1 table2 table3 table4 table6 fig1 fig4 fig6 ablation-prompt ablation-lambda-c ablation-lambda-n \
	ablation-encoder

clean-reports:
	rm -rf reports/out

mlflow: setup  ## a real MLflow server on 127.0.0.1:$(MLFLOW_PORT) serving the embedded store mlruns/mlflow.db
	$(PY) -m mlflow_server start --port $(MLFLOW_PORT)

mlflow-stop: setup
	$(PY) -m mlflow_server stop --port $(MLFLOW_PORT)

mlflow-status: setup
	$(PY) -m mlflow_server status --port $(MLFLOW_PORT)
