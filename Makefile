# The one entry point: make run | test | lint | fmt | chaos | chaos-redis | bench | bench-live |
# bench-etl | bench-joblist | bench-gang
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Enough settings to check migrations without a server or a secret.
CHECK_ENV := DEBUG=1 DATABASE_URL=sqlite:///:memory:

.PHONY: install system-deps run test test-fast lint fmt bench bench-live bench-etl bench-joblist \
	chaos chaos-redis bench-gang clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,torch]'
	touch $(STAMP)

install: $(STAMP)

system-deps:
	./scripts/system-deps.sh

## Run the whole local cluster in the foreground (Ctrl-C stops it).
run: install
	$(PY) -m portal.cluster

## Install everything and run every test.
test: install system-deps
	$(CHECK_ENV) $(PY) manage.py makemigrations --check --dry-run >/dev/null
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(CHECK_ENV) $(PY) manage.py makemigrations --check --dry-run

fmt: install
	$(VENV)/bin/ruff check --fix .

bench: install system-deps
	$(PY) -m bench.run && $(PY) -m bench.submit && $(PY) -m bench.live && $(PY) -m bench.etl && $(PY) -m bench.joblist

## The live path alone: event -> websocket latency with 1,000 clients and 200 nodes.
bench-live: install system-deps
	$(PY) -m bench.live

## ETL: etl.clickstream rows/s into PostgreSQL, 1 and 2 worker nodes, against a raw COPY.
bench-etl: install system-deps
	$(PY) -m bench.etl

## The job list at 1,000,000 jobs: p50/p99 of the first and a deep page, with and without filters.
bench-joblist: install system-deps
	$(PY) -m bench.joblist

## 100 seeded faults on the real processes (4 nodes, PostgreSQL); needs root for the network cuts.
chaos: install system-deps
	$(PY) -m chaos.campaign --faults 100 --min-redis 15 --min-cuts 10 --seed 1

## Redis killed 50 times under a busy worker node: the node must take work again each time.
chaos-redis: install system-deps
	$(PY) -m chaos.redis_loss --kills 50

## Gangs: train.torch on 1, 2 and 4 ranks (submit -> all ranks started, epoch time,
## rendezvous) against torchrun launching the same training by hand.
bench-gang: install system-deps
	$(PY) -m bench.gang

clean:
	rm -rf $(VENV) data staticfiles .pytest_cache
