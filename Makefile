# Every command people, CI and the README use. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8080
PYTEST_ARGS ?=

.PHONY: help system-deps setup clients aider clients-matrix test-aider console-assets bench-console bench-reports serve sim test test-rust test-python test-litellm wheel-smoke lint bench bench-rust bench-translate loadtest cluster-up cluster-down clean fault-matrix

help:
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

setup: $(BIN)/python ## create .venv, build the Rust extension, install ethereal with test deps
	$(BIN)/pip install --quiet -e '.[test,load]'

# To add or bump a client: `cd clients && npm install --save-exact NAME@VERSION`, then
# `python scripts/prune_npm_lock.py` (the registry here serves only this platform's builds; npm ci
# refuses a lock naming other platforms' packages it could not record)
CLIENTS := clients/node_modules/.bin/claude
$(CLIENTS): clients/package.json clients/package-lock.json
	cd clients && npm ci --no-audit --no-fund --loglevel=error
	touch $(CLIENTS)

clients: $(CLIENTS) ## the real CLIs and Node SDKs the tests drive (Claude Code, Codex, OpenCode, Continue, Qwen Code, Kilo Code, Cline, the SDKs), project-local

console-assets: ## copy the console's browser libraries (uPlot) from npm into dashboard/static/vendor (committed)
	bash scripts/vendor-console-assets.sh

serve: setup ## run the gateway on the embedded default (SQLite; simulated upstream if none configured)
	$(BIN)/ethereal serve --port $(PORT)

sim: setup ## run the simulated Anthropic API on its own
	$(BIN)/ethereal sim --port 8090

system-deps: ## the system packages the tests need (Redis, PostgreSQL, HAProxy, Chromium and its driver, Node): installed when missing
	bash scripts/system-deps.sh

# prerequisites run in this order: the system packages first, the wheel's smoke test last
test: system-deps setup clients aider lint test-rust test-python test-litellm test-aider wheel-smoke ## the whole test suite (what CI runs): system packages, gates, cargo test, pytest, the Dockerfile's install steps

test-rust:
	cargo test --workspace --quiet

test-python:  # pytest's exit 5 (no tests collected) is a failure, not a pass; --gc-each-test: see tests/conftest.py
	$(BIN)/python -m pytest -q --gc-each-test $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

LITELLM_VENV := .venv-litellm
$(LITELLM_VENV)/bin/python: | $(BIN)/python
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install --quiet --upgrade pip
	$(LITELLM_VENV)/bin/pip install --quiet "litellm>=1.60" "mcp>=1.0" "openai<3" pytest pytest-asyncio pytest-timeout httpx
	# layer the main environment (ethereal and its dependencies) under litellm's own packages
	$(BIN)/python -c 'import site, sys; print("\n".join(p for p in sys.path if p.endswith("site-packages") or p.endswith("/python")))' \
		> $$($(LITELLM_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/ethereal-main.pth

test-litellm: $(LITELLM_VENV)/bin/python ## LiteLLM as an OpenAI-compatible client, in its own environment
	$(LITELLM_VENV)/bin/python -m pytest -q tests/e2e/test_litellm.py; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

AIDER_VENV := .venv-aider
AIDER_VERSION := 0.86.2
$(AIDER_VENV)/bin/aider:
	$(PYTHON) -m venv $(AIDER_VENV)
	$(AIDER_VENV)/bin/pip install --quiet --upgrade pip
	$(AIDER_VENV)/bin/pip install --quiet "aider-chat==$(AIDER_VERSION)"
	touch $@

aider: $(AIDER_VENV)/bin/aider ## Aider (aider-chat, pinned) in its own environment: it pins its own dependencies

test-aider: setup aider ## Aider in both modes through the gateway (tests/e2e/test_aider.py, main environment driving .venv-aider's aider)
	ETHEREAL_AIDER=$(CURDIR)/$(AIDER_VENV)/bin/aider $(BIN)/python -m pytest -q tests/e2e/test_aider.py; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

clients-matrix: setup clients aider ## re-run every coding tool through the gateway and rewrite the table in docs/clients.md
	mkdir -p build
	-$(BIN)/python -m pytest -q tests/e2e/test_coding_tools.py --junitxml=build/clients-npm.xml
	-ETHEREAL_AIDER=$(CURDIR)/$(AIDER_VENV)/bin/aider $(BIN)/python -m pytest -q tests/e2e/test_aider.py --junitxml=build/clients-aider.xml
	$(BIN)/python scripts/clients_matrix.py --aider $(AIDER_VENV)/bin/python build/clients-npm.xml build/clients-aider.xml

wheel-smoke: ## build the wheel and install it as the Dockerfile does, then serve one request
	bash scripts/wheel-smoke.sh

lint: setup ## quality gates that fail: clippy (pedantic, workspace and fuzz crate) -D warnings, ruff check and format, mypy, the native stub against the extension
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --quiet -- -D warnings  # the fuzz crate is outside the workspace
	$(BIN)/python -m ruff check python tests loadtest scripts
	$(BIN)/python -m ruff format --check python tests loadtest scripts
	$(BIN)/python -m mypy
	MYPYPATH=python $(BIN)/python -m mypy.stubtest ethereal._native  # MYPYPATH: mypy cannot see the editable install

fault-matrix: setup clients ## the direct-vs-ethereal fault matrix with the real clients, written to docs/fault-matrix.md
	ETHEREAL_FAULT_MATRIX=docs/fault-matrix.md $(BIN)/python -m pytest -q -s tests/e2e/test_fault_matrix.py

bench-rust: ## Criterion benches of the Rust core
	cargo bench -p ethereal-core

bench: setup ## side-by-side latency/throughput benchmark (direct sim vs through the gateway)
	$(BIN)/python loadtest/bench.py

bench-translate: setup ## OpenAI translations (chat, responses): Rust vs Python reference, translated routes vs native route latency
	$(BIN)/python loadtest/bench_translate.py

bench-console: setup ## console goals: overview first paint over 1M usage rows, live-view CPU, /metrics scrape time
	$(BIN)/python loadtest/bench_console.py

bench-reports: setup ## report goal: a 31-day 1d usage report by key and model over 10M records, < 500 ms p50
	$(BIN)/python loadtest/bench_reports.py

LOAD_ARGS ?= --users 20 --spawn-rate 10 --duration 60s
loadtest: setup ## locust mix (Claude Code, OpenAI chat, Codex, operator) headless, bounded; fails on any error or p99 over limits
	$(BIN)/python loadtest/locust_run.py $(LOAD_ARGS)

REPLICAS ?= 2
cluster-up: setup ## PostgreSQL + 3-master Redis Cluster + $(REPLICAS) gateway replicas behind HAProxy, no Docker
	REPLICAS=$(REPLICAS) bash scripts/cluster.sh up

cluster-down:
	bash scripts/cluster.sh down

clean:
	rm -rf target $(VENV) $(LITELLM_VENV) $(AIDER_VENV) .pytest_cache
