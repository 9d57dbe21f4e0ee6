# Moat build and test entry points. `make test` is the one test command (CI runs it).

GO ?= go
NODE ?= node
NPM ?= npm
STATICCHECK_VERSION ?= v0.8.2
TOOLS := $(CURDIR)/bin/tools
STATICCHECK := $(TOOLS)/staticcheck-$(STATICCHECK_VERSION)
E2E := test/e2e
FUZZTIME ?= 5s
# -race needs cgo; set GOTESTFLAGS= to drop it
GOTESTFLAGS ?= -race -count=1

.PHONY: all build test vet staticcheck gotest e2e e2e-deps fuzz-smoke run clean

all: build

build:
	$(GO) build -o bin/moat ./cmd/moat

test: vet staticcheck gotest e2e

vet:
	$(GO) vet ./...

staticcheck: $(STATICCHECK)
	$(STATICCHECK) ./...

# pinned, installed into bin/tools so every machine runs the same checks
$(STATICCHECK):
	mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv $(TOOLS)/staticcheck $@

# the patched broker core is its own module (third_party/README.md); stacks
# are larger under -race, so the idle-connection test also runs once without it
gotest: e2e-deps
	$(GO) test $(GOTESTFLAGS) ./...
	cd third_party/mochi-mqtt-server && $(GO) test $(GOTESTFLAGS) . ./packets
	$(GO) test -count=1 -run '^TestIdleConnectionFootprint$$' ./internal/hub

# npm ci only when node_modules is missing or older than the lock file
$(E2E)/node_modules/.package-lock.json: $(E2E)/package-lock.json
	cd $(E2E) && $(NPM) ci --no-audit --no-fund

e2e-deps: $(E2E)/node_modules/.package-lock.json

# the end-to-end suite with the official Azure IoT Node SDKs against bin/moat
e2e: build e2e-deps
	cd $(E2E) && MOAT_BIN=$(CURDIR)/bin/moat $(NODE) run.js

# each fuzz target for $(FUZZTIME)
fuzz-smoke:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$f"; \
			$(GO) test -run='^$$' -fuzz="^$$f\$$" -fuzztime=$(FUZZTIME) $$pkg; \
		done; \
	done

run: build
	./bin/moat serve

clean:
	rm -rf bin

# The benchmark suite (internal/bench): starts bin/moat and Debian's Mosquitto on
# loopback, runs every scenario and writes bench-results/results.{json,md}.
.PHONY: bench bench-quick
bench: build
	$(GO) build -o bin/moatbench ./cmd/moatbench
	./bin/moatbench --moat-bin bin/moat --out bench-results

# the same, small (under a minute): a smoke test of the harness
bench-quick: build
	$(GO) build -o bin/moatbench ./cmd/moatbench
	./bin/moatbench --quick --moat-bin bin/moat --out bench-results/quick
