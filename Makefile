# TSOP — the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PKGS   := libs/events libs/devstack services/intake services/dispatch services/feedback services/incident services/archive
PYPROJECTS := $(addsuffix /pyproject.toml,$(PKGS))

.PHONY: browser install run test test-unit test-integration test-e2e lint catalogue bench bench-scale chaos kafka clean

$(STAMP): $(PYPROJECTS) requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q $(addprefix -e ,$(PKGS)) -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

## Start the whole platform on the embedded default (Ctrl-C stops it).
run: install
	$(BIN)/python -m tsop_devstack.stack

## Debian's Chromium for the browser tests (installed with apt-get when missing; playwright drives it).
browser: install
	$(BIN)/python -m tests.browser

## Lint, type-check, then every test tier (unit, integration, e2e).
test: install lint browser
	$(BIN)/python -m tests

test-unit: install
	$(BIN)/python -m tests unit

test-integration: install
	$(BIN)/python -m tests integration

test-e2e: install browser
	$(BIN)/python -m tests e2e

lint: install
	$(BIN)/ruff check libs services tests bench
	$(BIN)/mypy libs/events/src libs/devstack/src services/*/src bench
	$(BIN)/python -m tsop_events.catalogue
	$(BIN)/python -m tsop_events.configref
	$(BIN)/python -m pytest tests --collect-only -q -p no:cacheprovider > /dev/null  # every test module imports

## The event catalogue and the configuration reference (docs/configuration.md), regenerated.
catalogue: install
	$(BIN)/python -m tsop_events.catalogue --write
	$(BIN)/python -m tsop_events.configref --write

## Every benchmark, each on a fresh stack; JSON (and plots) in bench/results: complete lifecycles
## (with idle CPU, RSS and the open loop at 50/s), intake alone, dispatch at scale, TMF621 lists over a
## million tickets, feedback's step notifications to local receivers (5 % slow, 5 % failing) and its
## ratings over HTTP, the archive (verify and rebuild over a million events) and the statistics (lag,
## a month's report over a million tickets), the window between a legal hold and intake hearing of it, then
## scale-out on a 3-broker Apache Kafka cluster (bench-scale).
bench: install
	$(BIN)/python -m bench
	$(BIN)/python -m bench.intake
	$(BIN)/python -m bench.dispatch
	$(BIN)/python -m bench.tmf_list
	$(BIN)/python -m bench.incident
	$(BIN)/python -m bench.notifications
	$(BIN)/python -m bench.ratings
	$(BIN)/python -m bench.archive
	$(BIN)/python -m bench.stats
	$(BIN)/python -m bench.holds
	$(MAKE) bench-scale

## The lifecycle bench on Tansu, then on 3 Apache Kafka brokers with 1 and 2 instances of intake and
## dispatch: CPU per lifecycle per process, idle CPU, and a replay check that no technician went over
## capacity (about 10 minutes; Kafka's jars are fetched with mvn the first time).
SCALE_LIFECYCLES ?= 300
bench-scale: install
	$(BIN)/python -m bench.scale --lifecycles $(SCALE_LIFECYCLES) --data-dir .tsop/scale

## Faults on a real cluster: 3 Kafka brokers (replication 3, min.insync.replicas 2), two processes per
## service; 5 minutes of lifecycles while services, a broker and PostgreSQL are SIGKILLed and restarted.
## Reports completed, lost, duplicated effects and the longest stall; JSON in bench/results/chaos.json,
## data and every process's log in .tsop/chaos (emptied at each run).
CHAOS_SECONDS ?= 300
chaos: install
	$(BIN)/python -m bench.chaos --duration $(CHAOS_SECONDS) --data-dir .tsop/chaos

## A three-broker Apache Kafka (KRaft) cluster on loopback, jars from Maven Central.
kafka: install
	$(BIN)/python -m tsop_devstack.apache_kafka --brokers 3 --data-dir .tsop/kafka

clean:
	rm -rf $(VENV) .tsop .pytest_cache .mypy_cache .ruff_cache
