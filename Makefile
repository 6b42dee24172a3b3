# astro_reduce-airflow: `make demo` runs the main job on an embedded default, `make test` the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
DEMO_DIR ?= demo_data
DEMO_NIGHT ?= 2023-05-10

DEMO_ROOT = $(CURDIR)/$(DEMO_DIR)
DEMO_CONF = {"first_night": "2023-05-10", "last_night": "2023-05-11", \
  "raw_root": "$(DEMO_ROOT)/raw", "products_root": "$(DEMO_ROOT)/products", \
  "astrometry": "astromatic", "refcat": "$(DEMO_ROOT)/refcat.fits"}

.PHONY: install debian venv bytecode demo demo-s3 demo-cli airflow-init airflow airflow-stop cluster-up cluster-down test lint lock clean bench bench-cluster bench-archive

install: debian venv

# Debian packages from packages.txt that are not installed yet (apt-get as root, else sudo).
PACKAGE_LIST ?= packages.txt
debian:
	@missing=$$(grep -vE '^\s*(#|$$)' $(PACKAGE_LIST) | while read -r p; do \
		dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' || echo "$$p"; done); \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:" $$missing; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The virtual environment, rebuilt only when the lock or the package metadata change.
venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	@[ -x $(UV) ] || $(BIN)/python -m pip install -q uv
	$(UV) pip install -q -p $(BIN)/python --compile-bytecode -r requirements.txt
	$(UV) pip install -q -p $(BIN)/python --no-deps -e .
	@$(MAKE) --no-print-directory bytecode
	@touch $@

# Bytecode of the project's own modules: without it (PYTHONDONTWRITEBYTECODE, read-only trees)
# every astro_reduce command and Airflow task recompiles ~250 modules, 0.36 s per interpreter.
bytecode:
	@$(BIN)/python -m compileall -q ar_tasks dags plugins bench >/dev/null

# Compile the pinned lock from requirements.in (deliberate pins live there).
lock: $(VENV)/.installed
	$(UV) pip compile -q requirements.in --python-version 3.11 -o requirements.txt

# The main job on the embedded default: two synthetic nights reduced by the DAG on SQLite (the
# second has no calibrations of its own: it borrows the first night's masters),
# astrometry by SCAMP against the synthetic fields' star catalogue (offline).
demo: install
	@rm -rf $(DEMO_DIR)
	$(BIN)/python -m ar_tasks.synthetic --root $(DEMO_DIR)/raw --night 2023-05-10 --night 2023-05-11 \
	  --science-only 2023-05-11 --refcat $(DEMO_DIR)/refcat.fits
	AIRFLOW_HOME=$(CURDIR)/$(DEMO_DIR)/airflow scripts/airflow-init.sh
	@echo "airflow dags test t120_reduce (log: $(DEMO_DIR)/dags_test.log) ..."
	@source scripts/airflow-env.sh && export AIRFLOW_HOME=$(CURDIR)/$(DEMO_DIR)/airflow && \
	  export AR_ASTROMETRY_JOBS=2 && SECONDS=0 && airflow dags test t120_reduce 2023-05-12 -c '$(DEMO_CONF)' \
	  > $(DEMO_DIR)/dags_test.log 2>&1 || { tail -40 $(DEMO_DIR)/dags_test.log; exit 1; }; \
	  echo "airflow dags test took $$SECONDS s"
	@grep -o "DagRun Finished: dag_id=t120_reduce.*state=[a-z]*" $(DEMO_DIR)/dags_test.log | sed 's/logical_date.*state=/state=/'
	@$(BIN)/python -m ar_tasks.summary $(DEMO_DIR)/products/2023-05-10 $(DEMO_DIR)/products/2023-05-11

# The same demo with the raw archive and the products in S3 (a local S3 server on 127.0.0.1).
demo-s3: install
	$(BIN)/python scripts/demo_s3.py --dir $(DEMO_DIR)/s3

# The same night reduced by the astro_reduce command, in the night folder itself.
demo-cli: install
	@rm -rf $(DEMO_DIR)/cli
	$(BIN)/python -m ar_tasks.synthetic --root $(DEMO_DIR)/cli --night $(DEMO_NIGHT)
	cd $(DEMO_DIR)/cli/$(DEMO_NIGHT) && $(CURDIR)/$(BIN)/astro_reduce --setup >/dev/null
	cd $(DEMO_DIR)/cli/$(DEMO_NIGHT) && $(CURDIR)/$(BIN)/astro_reduce --interpolate --tmppng --stkpng
	@$(BIN)/python -m ar_tasks.summary $(DEMO_DIR)/cli/$(DEMO_NIGHT)

# Migrate the embedded metadata database (.airflow/) and create the pools.
airflow-init: install
	scripts/airflow-init.sh

# airflow standalone on http://127.0.0.1:8080 (AIRFLOW_PORT=...), detached; prints the login.
airflow: install
	scripts/airflow-standalone.sh start

airflow-stop:
	scripts/airflow-standalone.sh stop

# The distributed cluster natively (no Docker): PostgreSQL, Redis, api-server, scheduler,
# dag-processor, triggerer and a Celery worker on 127.0.0.1, state in .cluster/ (AR_CLUSTER_HOME);
# ports and settings in scripts/cluster-env.sh. Prints the URL, the login and the start-up time.
cluster-up: install
	scripts/cluster.sh up

cluster-down:
	scripts/cluster.sh down

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	$(BIN)/pytest -q

# Benchmarks: astro_reduce 5.1.3 (own venv from PyPI), IRAF, ours and the read+write floor on
# the same synthetic nights; rewrites the tables of BENCHMARKS.md (about 23 minutes on 2 cores).
BENCH_ARGS ?= --configs 1024x5,1024x20,1024x50:2,2048x5:2,2048x20:1 --astrometry --airflow
bench: install
	$(MAKE) --no-print-directory debian PACKAGE_LIST=bench/packages.txt
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.report

# The DAG at archive scale: a 12-night 1024² backfill on the native Celery cluster, then its
# rerun, beside the CLI on the same nights (bench/results/cluster_backfill.json; 4 minutes on
# 2 cores at 556b005). BENCH_CLUSTER_ARGS=--write-benchmarks also writes the row "after" of its
# table in BENCHMARKS.md; --source worktree measures uncommitted code (default: HEAD's snapshot).
BENCH_CLUSTER_ARGS ?=
bench-cluster: install
	$(BIN)/python -m bench.cluster_backfill $(BENCH_CLUSTER_ARGS)

# A 30-night archive (complete nights, borrowers, damaged files, empty dates) backfilled on the
# cluster with local roots, then with S3 roots (the cluster's moto server), then the 10-year plan
# SCALING.md from both (bench/results/cluster_backfill_30_{local,s3}.json; see BENCHMARKS.md,
# "A 30-night archive, local and S3 roots"). BENCH_ARCHIVE_ARGS=--write-benchmarks also writes
# the two rows of its table.
BENCH_ARCHIVE_ARGS ?=
bench-archive: install
	$(BIN)/python -m bench.cluster_backfill --nights 30 --roots local $(BENCH_ARCHIVE_ARGS)
	$(BIN)/python -m bench.cluster_backfill --nights 30 --roots s3 $(BENCH_ARCHIVE_ARGS)
	$(BIN)/python -m bench.scaling

clean:
	rm -rf $(DEMO_DIR) .airflow .pytest_cache .ruff_cache build *.egg-info bench/work bench/results
