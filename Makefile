# shadowgate: every set-up step is here, so a fresh machine needs only `make demo` and `make test`.
PYTHON ?= python3
# cargo (Rust, from rustup) builds the native hot path at install time
export PATH := $(HOME)/.cargo/bin:$(PATH)
STATE  ?= .local
STAMP  := $(STATE)/.installed

.PHONY: help install up up-secure down status demo test test-fast test-clock reliability reliability-short lint rules native-check helm-check schemas bench bench-quick clean

help:
	@echo "make demo       bring up Kafka + Redis and run the end-to-end demo"
	@echo "make test       bring up Kafka + Redis and run the whole test suite"
	@echo "make up | down  start / stop the local Kafka broker and Redis server"
	@echo "make up-secure  the same servers secured: SASL_SSL + ACLs, TLS + ACL users (docs/security.md)"
	@echo "make reliability  the standing fault suite against real servers (RELIABILITY=full, ~25 min; figures in"
	@echo "                 benchmarks/results/reliability.json); make reliability-short: its CI form (a few minutes)"
	@echo "make test-clock  server-free tests again, with the clock moved 400 days ahead (faketime)"
	@echo "make lint       native-check + ruff + mypy --strict + import directions + JSON Schemas current + crypto audit + rules"
	@echo "make rules      promtool check rules/config + promtool test rules (deploy/prometheus/tests) + amtool check-config"
	@echo "make native-check  the native core: cargo test, clippy -D warnings, rustfmt (in native/)"
	@echo "make helm-check the Helm chart: helm lint, helm template (defaults, every option on), kubeconform -strict"
	@echo "make bench      run the benchmarks (figures land in benchmarks/results/; one table, also into the README)"
	@echo "make bench-quick  the same at small sizes in about 13 minutes (benchmarks/results/quick/, README untouched)"

# The editable install compiles native/ once: changed Rust sources need a reinstall. The extension is optional
# to pip (a machine without cargo gets the Python reference joins); where cargo is, a failed build (a stale
# Cargo.lock: the build runs --locked) fails here instead of leaving the worker on the slow path.
NATIVE_SOURCES := native/Cargo.toml native/Cargo.lock $(wildcard native/*/Cargo.toml native/*/src/*.rs native/*/src/*/*.rs)
$(STAMP): pyproject.toml $(NATIVE_SOURCES)
	@mkdir -p $(STATE)
	$(PYTHON) -m pip install -q -e '.[dev]'
	@if command -v cargo >/dev/null 2>&1 && ! $(PYTHON) -c 'import streams._native' 2>/dev/null; then \
	  echo "cargo is installed but the native core did not build (a stale native/Cargo.lock?);" \
	    "to see why: cd native && cargo build --locked -p shadowgate-native" >&2; \
	  exit 1; \
	fi
	@touch $(STAMP)

install: $(STAMP)

up: install
	bash deploy/local/servers.sh up

up-secure: install
	$(PYTHON) -m shadowgate up --secure

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

# The standing fault suite (tests/reliability, docs/reliability.md "The standing fault suite"): real SIGKILLs and
# server restarts, each scenario ending in an exact comparison with `shadowgate replay`. Never part of `make test`
# (tests/conftest.py collects tests/reliability only when RELIABILITY is set). RELIABILITY_SOAK_S scales the soak.
RELIABILITY ?= full
reliability: up
	RELIABILITY=$(RELIABILITY) $(PYTHON) -m pytest tests/reliability -p no:cacheprovider -o timeout=2400 -q

reliability-short:
	$(MAKE) reliability RELIABILITY=short

# A date bomb fails here the day it is written, not the day it goes off. Server tests stay out: the broker
# refuses record timestamps far from its own clock. libfaketime 0.9.10 hangs librdkafka's timed waits,
# so tests that need the real clock are marked real_clock.
FAKETIME_OFFSET ?= +400d
test-clock: install
	@command -v faketime >/dev/null 2>&1 || { echo "faketime not found: apt-get install faketime" >&2; exit 1; }
	faketime -m -f '$(FAKETIME_OFFSET)' $(PYTHON) -c 'import datetime as d; print("clock moved to", d.datetime.now(d.UTC))'
	faketime -m -f '$(FAKETIME_OFFSET)' $(PYTHON) -m pytest -p no:cacheprovider -m "not integration and not real_clock"

# The native core (pure Rust, native/core) and its binding (native/python), as CI checks them.
native-check:
	cd native && cargo test --locked && cargo clippy --locked --all-targets -- -D warnings && cargo fmt --all --check

lint: install native-check rules helm-check
	ruff check .
	mypy
	lint-imports --no-cache
	$(PYTHON) -m shadowgate schemas --check
	$(PYTHON) -m shadowgate crypto audit .

# The alert rules and their unit tests (Debian: apt-get install prometheus prometheus-alertmanager), and the
# Alertmanager and alert-forwarder configs the compose stack mounts.
rules:
	@command -v promtool >/dev/null 2>&1 || { echo "promtool not found: apt-get install prometheus" >&2; exit 1; }
	@command -v amtool >/dev/null 2>&1 || { echo "amtool not found: apt-get install prometheus-alertmanager" >&2; exit 1; }
	promtool check rules deploy/prometheus/alerts.yml
	promtool check config deploy/prometheus/prometheus.yml
	promtool test rules deploy/prometheus/tests/*.yml
	amtool check-config deploy/alertmanager/alertmanager.yml
	$(PYTHON) -m shadowgate alerts forward --config deploy/alerts/forwarder.yml --check

# The Helm chart (deploy/helm/shadowgate): linted and rendered with its defaults and with every optional part on
# (ci/all-on-values.yaml), and the manifests checked by kubeconform -strict against the Kubernetes schemas of the
# oldest and newest version it supports (from the kubernetes-validate package, offline) and the ServiceMonitor
# schema in deploy/helm/schemas/. helm and kubeconform come from the Go module proxy (.ci/run installs them):
#   go install helm.sh/helm/v4/cmd/helm@v4.3.2 && go install github.com/yannh/kubeconform/cmd/kubeconform@v0.8.0
GOBIN_DIR   := $(shell go env GOBIN 2>/dev/null || true)
GOPATH_BIN  := $(shell go env GOPATH 2>/dev/null || echo $(HOME)/go)/bin
HELM        ?= $(firstword $(shell command -v helm 2>/dev/null) $(wildcard $(GOBIN_DIR)/helm $(GOPATH_BIN)/helm))
KUBECONFORM ?= $(firstword $(shell command -v kubeconform 2>/dev/null) $(wildcard $(GOBIN_DIR)/kubeconform $(GOPATH_BIN)/kubeconform))
CHART       := deploy/helm/shadowgate
KUBE_VERSIONS ?= 1.25.0 1.37.0
CHART_ALL_ON := -f $(CHART)/ci/all-on-values.yaml --set-file policy=governance/policy/default_policy.yaml \
	--set-file catalog=governance/policy/feature_catalog.yaml
helm-check:
	@test -n "$(HELM)" || { echo "helm not found: go install helm.sh/helm/v4/cmd/helm@v4.3.2" >&2; exit 1; }
	@test -n "$(KUBECONFORM)" || { echo "kubeconform not found: go install github.com/yannh/kubeconform/cmd/kubeconform@v0.8.0" >&2; exit 1; }
	$(HELM) lint --strict $(CHART)
	$(HELM) lint --strict $(CHART) $(CHART_ALL_ON)
	$(PYTHON) deploy/helm/kubeconform_schemas.py $(STATE)/kubeconform $(KUBE_VERSIONS) >/dev/null
	@for v in $(KUBE_VERSIONS); do for values in "" "$(CHART_ALL_ON)"; do \
	  echo "kubeconform -strict, Kubernetes $$v, $${values:-default values}"; \
	  $(HELM) template shadowgate $(CHART) $$values | $(KUBECONFORM) -strict -summary \
	    -schema-location "$(STATE)/kubeconform/v$$v-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
	    -schema-location "deploy/helm/schemas/{{ .ResourceKind }}{{ .KindSuffix }}.json" - || exit 1; \
	done; done

schemas: install
	$(PYTHON) -m shadowgate schemas

# BENCH_SOAK_S=120 shortens bench_memory's steady run (default 600 s: the 10 minutes of issue 17).
bench: up
	$(PYTHON) benchmarks/run_all.py

bench-quick: up
	BENCH_QUICK=1 $(PYTHON) benchmarks/run_all.py

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info
