# mailledger — make run | make test | make install | make lint | make migrate | make compose-check
#
# `run` and `test` first make sure PostgreSQL, NATS (JetStream) and Redis are reachable
# at the configured URLs, installing (apt) and starting them locally when they are not:
# see scripts/ensure-services.sh.

CARGO ?= cargo
SERVICES := scripts/ensure-services.sh
BIN := target/release/mailledger
# Where `make install` puts the binary: /usr/local/bin as root, else ~/.local/bin.
PREFIX ?= $(if $(filter 0,$(shell id -u)),/usr/local,$(HOME)/.local)
# The oldest Rust that builds mailledger (edition 2024), from Cargo.toml.
RUST_MIN := $(shell sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml)
# redis-server and nats-server live in /usr/sbin on Debian; the tests start their own.
export PATH := $(CURDIR)/target/tools/bin:$(PATH):/usr/local/sbin:/usr/sbin:/sbin

.PHONY: run test lint fmt migrate services check-toolchain build release clean bench cert key install compose-check examples nats-cluster chaos soak

check-toolchain:
	@command -v $(CARGO) >/dev/null 2>&1 || { \
	  echo "mailledger: cargo not found. Install Rust $(RUST_MIN) or newer with rustup: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh"; \
	  exit 1; }
	@have=$$(rustc --version 2>/dev/null | cut -d' ' -f2); \
	  if [ "$$(printf '%s\n%s\n' "$(RUST_MIN)" "$$have" | sort -V | head -n 1)" != "$(RUST_MIN)" ]; then \
	  echo "mailledger: Rust $(RUST_MIN) or newer is needed (edition 2024), this is rustc $${have:-missing} (Debian's rustc/cargo packages are too old): curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh, or rustup update"; \
	  exit 1; fi
	@command -v cc >/dev/null 2>&1 || { \
	  echo "mailledger: a C compiler is needed to build some dependencies: sudo apt-get install -y build-essential"; \
	  exit 1; }

services:
	@bash $(SERVICES)

## Run the service (REST :8080, gRPC :50051, metrics :9090) until Ctrl-C.
## A development signing key for the proof log is made in .run/signing.key on first use.
## Its process id is in .run/mailledger.pid (for `kill -HUP "$(cat .run/mailledger.pid)"`).
run: check-toolchain services
	$(CARGO) build --release --bin mailledger
	@mkdir -p .run; test -f .run/signing.key || $(BIN) ledger keygen --out .run/signing.key
	@echo "mailledger: serving; the CLI is $(BIN) (make install puts it on PATH); pid in .run/mailledger.pid"
	@echo $$$$ > .run/mailledger.pid; MAILLEDGER_SIGNING_KEY=$${MAILLEDGER_SIGNING_KEY:-.run/signing.key} exec $(BIN) serve

## Put the `mailledger` command on PATH: $(PREFIX)/bin/mailledger (PREFIX=… for another place).
install: check-toolchain
	$(CARGO) build --release --bin mailledger
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/mailledger
	@case ":$$PATH:" in *":$(PREFIX)/bin:"*) echo "mailledger: installed $(PREFIX)/bin/mailledger";; \
	  *) echo "mailledger: installed $(PREFIX)/bin/mailledger; $(PREFIX)/bin is not on PATH: export PATH=\"$(PREFIX)/bin:\$$PATH\"";; esac

## Run the README's examples against the service `make run` started (in another terminal).
examples:
	@bash scripts/readme-examples.sh

## Validate compose/docker-compose.yml without a Docker engine (schema, pinned images,
## files, OTLP protocol) and the Dockerfile's shape; with the compose plugin, also
## `docker compose config`.
compose-check:
	@if docker compose version >/dev/null 2>&1; then docker compose -f compose/docker-compose.yml config -q && echo "compose: docker compose config: valid"; fi
	$(CARGO) test --test suite -- operability::the_compose operability::the_image

## Run every test against the local PostgreSQL, NATS and Redis.
test: check-toolchain services
	@bash scripts/ensure-test-tools.sh
	$(CARGO) test --all-targets --no-fail-fast

## The benchmark: every figure beside its limit, measured in the same run (release build).
## BENCH_SCALE=0.1 for a quick look, BENCH_SCALE=2 for 2,000,000 emails; BENCH_ROUNDS=5.
bench: check-toolchain services
	$(CARGO) bench --bench bench

## The fault matrix (issue #16): SIGKILLs, PostgreSQL stopped and crashed, nats-server killed,
## Redis down and frozen, SMTP down, two instances with one killed, poison among valid commands,
## against servers it starts itself; CHAOS_EMAILS (10000) a scenario. Prints a table, writes
## target/chaos/report.json, exits non-zero on any lost or duplicated event.
## CHAOS_ONLY=kill,nats for some; CHAOS_CARGO_FLAGS=--release for the optimised binary.
chaos: check-toolchain services
	CHAOS_EMAILS=$(or $(CHAOS_EMAILS),10000) $(CARGO) test $(CHAOS_CARGO_FLAGS) --test chaos

## A steady load for SOAK_MINUTES (30) at SOAK_RATE (50/s): RSS, file descriptors, connections,
## storage, lag and latency sampled every SOAK_SAMPLE_SECS (30) to target/soak/report.json.
soak: check-toolchain services
	SOAK_MINUTES=$(or $(SOAK_MINUTES),30) $(CARGO) test $(CHAOS_CARGO_FLAGS) --test chaos -- soak

## An API key with every scope, for a first try: the key is the last line printed.
## KEY=$$(make -s key | tail -n 1); NAME=… for another name.
key: check-toolchain services
	@$(CARGO) run --release --quiet --bin mailledger -- keys create --name $${NAME:-first} --scope all

## A 3-node NATS JetStream cluster on loopback (see the README's "Scaling").
nats-cluster:
	@bash scripts/nats-cluster.sh start

## A local CA and a server certificate for nginx (nginx/certs).
cert:
	@bash scripts/make-cert.sh

## Formatting and lints, as CI expects them.
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

migrate: check-toolchain services
	$(CARGO) run --release --bin mailledger -- migrate

build:
	$(CARGO) build

release:
	$(CARGO) build --release

clean:
	$(CARGO) clean
