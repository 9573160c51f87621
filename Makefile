# shadowgate: every set-up step is here, so a fresh machine needs only `make demo` and `make test`.
PYTHON ?= python3
# cargo (Rust, from rustup) builds the native hot path at install time
export PATH := $(HOME)/.cargo/bin:$(PATH)
STATE  ?= .local
STAMP  := $(STATE)/.installed

.PHONY: help install up down status demo test test-fast lint schemas bench clean

help:
	@echo "make demo       bring up Kafka + Redis and run the end-to-end demo"
	@echo "make test       bring up Kafka + Redis and run the whole test suite"
	@echo "make up | down  start / stop the local Kafka broker and Redis server"
	@echo "make lint       ruff + mypy --strict + JSON Schemas current + crypto audit (PQC phase 3)"
	@echo "make bench      run the benchmarks (figures land in benchmarks/results/)"

# The editable install compiles native/ once: changed Rust sources need a reinstall.
$(STAMP): pyproject.toml native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)
	@mkdir -p $(STATE)
	$(PYTHON) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

up: install
	bash deploy/local/servers.sh up

down:
	bash deploy/local/servers.sh down

status:
	bash deploy/local/servers.sh status

demo: up
	$(PYTHON) -m shadowgate demo

test: up
	$(PYTHON) -m pytest

test-fast: install
	$(PYTHON) -m pytest -m "not integration and not slow"

lint: install
	ruff check .
	mypy
	$(PYTHON) -m shadowgate schemas --check
	$(PYTHON) -m shadowgate crypto audit .

schemas: install
	$(PYTHON) -m shadowgate schemas

bench: up
	$(PYTHON) benchmarks/run_all.py

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info
