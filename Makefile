# ContextCache entry points. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help
MAKEFLAGS += --warn-undefined-variables --no-builtin-rules

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
BUF := $(VENV)/bin/buf
GEN := gen
PROTO_FILES := $(wildcard protos/contextcache/v1/*.proto) $(wildcard protos/contextcache/internal/v1/*.proto)
# Our wire-compatible subset of Envoy's rate limit service API (services/ratelimit).
RLS_PROTO_FILES := $(wildcard protos/envoy_rls/*.proto)
VALIDATE_DESC := build/protovalidate.binpb
IMAGE := build/contextcache.binpb
# googleapis' .proto files (google/api/annotations.proto, http.proto, google/rpc/*.proto) as
# shipped by the installed googleapis-common-protos; evaluated only when a recipe runs.
GOOGLEAPIS = $(shell $(PY) -c 'import pathlib, google.api.annotations_pb2 as m; print(pathlib.Path(m.__file__).parents[2])')
# What Envoy's gRPC-JSON transcoder reads: the public services with their google.api.http
# rules, and the google.rpc error details it turns into JSON (envoy/envoy.yaml).
GATEWAY_DESC := build/gateway.binpb
PUBLIC_PROTO_FILES := $(wildcard protos/contextcache/v1/*.proto)
# The web console (web/): npm dependencies locked by web/package-lock.json; TypeScript
# clients generated from the public protos into web/src/gen; the built app in web/dist.
WEB := web
NPM ?= npm
WEB_SOURCES := $(shell find $(WEB)/src -type f -not -path '$(WEB)/src/gen/*' 2>/dev/null) \
  $(WEB)/index.html $(WEB)/vite.config.ts $(WEB)/tsconfig.json $(WEB)/buf.gen.yaml

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

# Two locks, compiled with hashes from their inputs by `make lock`: requirements.txt (what the
# services need; the image installs only this) and requirements-dev.txt (test and development
# tools). Every file pip installs is checked against its hash.
# torch is the CPU build (torch==2.13.0+cpu in the lock; PyPI's 2.13.0 is the multi-GB CUDA
# build): pip takes it from a local wheel directory (PIP_FIND_LINKS) or from TORCH_INDEX, e.g.
# PyTorch's CPU index (the Dockerfile sets it).
TORCH_INDEX ?=
INSTALL_DEV ?= yes
PIP_INSTALL_LOCKED = $(PIP) install -q --require-hashes $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP_INSTALL_LOCKED) -r requirements.txt
	$(if $(filter yes,$(INSTALL_DEV)),$(PIP_INSTALL_LOCKED) -r requirements-dev.txt)
	# The repository and the generated code are importable from the virtualenv.
	printf '%s\n%s\n' "$(CURDIR)" "$(CURDIR)/$(GEN)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/contextcache.pth"
	# The query embedder's ONNX graph, exported from the packaged weights (offline), checked
	# against torch's vectors, into the virtualenv.
	$(PY) tools/export_onnx.py --force
	touch $@

PIP_COMPILE = $(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
  --no-emit-index-url --no-emit-find-links

.PHONY: lock
lock: ## Re-lock requirements.txt and requirements-dev.txt from their .in files (keeps other pins)
	@test -x $(VENV)/bin/pip-compile || { echo "pip-compile missing: run make install" >&2; exit 1; }
	$(PIP_COMPILE) --output-file=requirements.txt requirements.in
	$(PIP_COMPILE) --output-file=requirements-dev.txt requirements-dev.in
	$(PY) tools/locks.py stamp

# The `contextcache` command (console script of pyproject.toml), for this checkout.
$(VENV)/bin/contextcache: pyproject.toml $(VENV)/.installed
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

# INSTALL_CONSOLE=no skips the console (the Dockerfile builds it in a Node stage).
INSTALL_CONSOLE ?= yes

.PHONY: install
install: $(VENV)/.installed $(VENV)/bin/contextcache protos $(if $(filter yes,$(INSTALL_CONSOLE)),console) ## Create the virtualenv from both locks (hashes checked), the `contextcache` command, the protos and the web console

$(VALIDATE_DESC): $(VENV)/.installed tools/protovalidate_descriptor.py
	$(PY) tools/protovalidate_descriptor.py $@

$(GEN)/.stamp: $(PROTO_FILES) $(RLS_PROTO_FILES) $(VALIDATE_DESC)
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc --descriptor_set_in=$(VALIDATE_DESC) --python_out=$(GEN) --pyi_out=$(GEN) \
	  buf/validate/validate.proto
	$(PY) -m grpc_tools.protoc --descriptor_set_in=$(VALIDATE_DESC) -Iprotos -I$(GOOGLEAPIS) \
	  --python_out=$(GEN) --pyi_out=$(GEN) --grpc_python_out=$(GEN) $(PROTO_FILES:protos/%=%)
	$(PY) -m grpc_tools.protoc -Iprotos \
	  --python_out=$(GEN) --pyi_out=$(GEN) --grpc_python_out=$(GEN) $(RLS_PROTO_FILES:protos/%=%)
	$(PY) -m grpc_tools.protoc --descriptor_set_in=$(VALIDATE_DESC) -Iprotos -I$(GOOGLEAPIS) \
	  --include_imports --include_source_info -o $(IMAGE) $(PROTO_FILES:protos/%=%)
	$(PY) -m grpc_tools.protoc --descriptor_set_in=$(VALIDATE_DESC) -Iprotos -I$(GOOGLEAPIS) \
	  --include_imports -o $(GATEWAY_DESC) $(PUBLIC_PROTO_FILES:protos/%=%) google/rpc/error_details.proto
	touch $@

.PHONY: protos
protos: $(GEN)/.stamp ## Generate Python messages, .pyi stubs and gRPC stubs into gen/

# The OpenAPI document of the JSON API, committed (tests/unit/test_openapi.py fails while stale).
docs/openapi.yaml: $(GEN)/.stamp tools/openapi.py
	$(PY) tools/openapi.py $(IMAGE) > $@

.PHONY: openapi
openapi: docs/openapi.yaml ## Regenerate docs/openapi.yaml (JSON over HTTP) from the protos

$(WEB)/node_modules/.installed: $(WEB)/package.json $(WEB)/package-lock.json
	@command -v $(NPM) >/dev/null || { echo "The web console needs Node.js 20+ and npm (e.g. apt-get install nodejs npm)" >&2; exit 1; }
	cd $(WEB) && $(NPM) ci --no-audit --no-fund --loglevel=error
	touch $@

$(WEB)/dist/index.html: $(WEB)/node_modules/.installed $(GEN)/.stamp $(WEB_SOURCES)
	cd $(WEB) && PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(NPM) run --silent generate
	cd $(WEB) && $(NPM) run --silent build

.PHONY: console
console: $(WEB)/dist/index.html ## Build the web console into web/dist (TypeScript clients from the public protos)

.PHONY: lint
lint: install ## ruff, buf lint, buf format check, tsc (web console)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(BUF) lint $(IMAGE) --path contextcache
	$(BUF) format --diff --exit-code protos
	cd $(WEB) && node_modules/.bin/tsc --noEmit

.PHONY: breaking
breaking: install ## buf breaking (FILE) of contextcache.v1 against the protos of BASE (default: HEAD^1)
	tools/buf_breaking.sh

.PHONY: migrate
migrate: install ## Apply database migrations of every service (DATABASE_URL or the embedded SQLite files)
	$(PY) -m runtime.migrate

# Backups (docs/operations.md). `make backup` writes to BACKUP (default backups/<UTC time>);
# `make restore BACKUP=DIR` needs the directory named; REPLACE=yes overwrites existing data.
BACKUP ?= backups/$(shell date -u +%Y%m%dT%H%M%SZ)
REPLACE ?= no

.PHONY: backup
backup: install ## Back up the deployment (DATA_DIR or DATABASE_URL) into BACKUP=DIR (default backups/<time>)
	$(PY) -m operations.backup create --to "$(BACKUP)"

.PHONY: restore
restore: install ## Restore BACKUP=DIR into the stopped deployment and rebuild its index (REPLACE=yes overwrites)
	$(if $(filter file,$(origin BACKUP)),$(error make restore needs BACKUP=DIR, the backup to restore))
	$(PY) -m operations.backup restore --from "$(BACKUP)" $(if $(filter yes,$(REPLACE)),--replace)

.PHONY: run
run: install ## Run the whole stack on the embedded default (Ctrl-C stops everything)
	$(PY) -m runtime.stack

.PHONY: demo
demo: install ## Start the stack, ingest the sample documents, ask questions, stop
	$(PY) -m examples.demo

# Line coverage of our code, the services the tests start as subprocesses included
# ([tool.coverage] in pyproject.toml); COVERAGE=no runs without measuring.
COVERAGE ?= yes

.PHONY: test
test: install ## Run the test suite with a coverage report (needs PostgreSQL and Redis on 127.0.0.1 for the server tests)
	$(PY) -m pytest -q $(if $(filter yes,$(COVERAGE)),--cov --cov-report=term)

# A fuzzing campaign against a fresh stack (tests/fuzz): FUZZ_REQUESTS generated requests
# over every transport, at most FUZZ_SECONDS; FUZZ_SEED replays a campaign (a random one is
# printed otherwise). Fails on any INTERNAL/UNKNOWN/5xx, a health check not SERVING, a dead
# process or half-written data.
FUZZ_REQUESTS ?= 10000
FUZZ_SECONDS ?= 3600
FUZZ_SEED ?=

.PHONY: fuzz
fuzz: install ## Fuzz the whole stack: 10,000 generated requests (FUZZ_SEED, FUZZ_REQUESTS)
	$(PY) -m tests.fuzz --requests $(FUZZ_REQUESTS) --max-seconds $(FUZZ_SECONDS) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED))

# The fault matrix (tests/faults/): every fault on the stack of `make run`, and one replica
# of each replicated service killed on the scaled topology (--replicas 2), each on a
# PostgreSQL and a Redis of its own; each fault's figures go to build/fault-matrix.md.
FAULT_FIGURES := build/fault-matrix.md

.PHONY: chaos
chaos: install ## Inject every fault (restarts, kill -9, outages) under load; figures in build/fault-matrix.md
	mkdir -p build && printf '| fault | lasted | last failed call | calls by code |\n|---|---|---|---|\n' > $(FAULT_FIGURES)
	FAULT_MATRIX=full FAULT_FIGURES=$(CURDIR)/$(FAULT_FIGURES) $(PY) -m pytest -q tests/faults
	cat $(FAULT_FIGURES)

.PHONY: bench
bench: install ## Run the benchmarks (prints figures)
	for b in bench/*.py; do $(PY) $$b; done

.PHONY: clean
clean: ## Remove generated code, build output and local data
	rm -rf $(GEN) build var $(WEB)/dist $(WEB)/src/gen $(WEB)/node_modules
