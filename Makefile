# banger — see README.md. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
export GOFLAGS ?= -buildvcs=false

VERSION  ?= $(shell git describe --tags --exact-match 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
BUILT_AT ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
PKG      := github.com/banger-dev/banger/internal/buildinfo
LDFLAGS  := -X $(PKG).Version=$(VERSION) -X $(PKG).Commit=$(COMMIT) -X $(PKG).BuiltAt=$(BUILT_AT) -X github.com/banger-dev/banger/internal/agent.Version=$(VERSION)
BIN      := build/bin
BINARIES := banger bangerd banger-vmm banger-agent banger-vk
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: help deps build run test test-short smoke lint fmt bench clean k8s-tools

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

deps: ## install the Debian packages banger and its tests need (root; idempotent)
	@scripts/install-deps.sh

build: ## build every binary into build/bin with build info stamped
	@mkdir -p $(BIN)
	@# Static (CGO_ENABLED=0) like release builds: banger-agent runs inside guests.
	@for b in $(BINARIES); do \
		CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/$$b ./cmd/$$b || exit 1; \
	done
	@$(BIN)/banger --version

run: deps build ## the main job: set up, start the daemon, show it
	@scripts/run.sh

test: deps k8s-tools ## every test: unit, e2e with real guests (and a real Kubernetes control plane), a short run of every fuzz target, then the systemd smoke suite (root parts skip without root)
	BANGER_REQUIRE_K8S=1 $(GO) test -count=1 -timeout 55m ./...
	$(MAKE) fuzz-short
	$(MAKE) smoke

SCENARIO ?=
JOBS     ?= 3
smoke: deps ## end-to-end suite on real systemd + real guests (root; SCENARIO=a,b to pick; -smoke.list lists)
	$(GO) test -tags smoke -count=1 -timeout 45m -v ./test/smoke -args -smoke.jobs=$(JOBS) $(if $(SCENARIO),-smoke.scenario=$(SCENARIO))

k8s-tools: ## build kube-apiserver, kube-scheduler, kube-controller-manager, kubectl and etcd from Go modules into the test cache (once; ~12 min cold)
	@GO=$(GO) scripts/k8s-tools.sh

test-short: ## unit tests only: no root, no guests
	$(GO) test -short -count=1 ./...

lint: ## gofmt, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	$(GO) vet -tags smoke ./test/smoke
	$(GO) run $(STATICCHECK) -tags smoke ./test/smoke

fmt: ## gofmt the tree
	gofmt -w $$(git ls-files '*.go')

FUZZTIME      ?= 60s
FUZZSHORTTIME ?= 8s
.PHONY: fuzz fuzz-short
fuzz: ## fuzz every parser of untrusted bytes, FUZZTIME (60s) per target (scripts/fuzz.sh lists them)
	GO=$(GO) FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

fuzz-short: ## fuzz every target for a short fixed time (FUZZSHORTTIME, 8s each; what make test runs)
	GO=$(GO) FUZZTIME=$(FUZZSHORTTIME) scripts/fuzz.sh

bench: ## benchmarks (speed goals live here, not in timed tests)
	$(GO) test -run '^$$' -bench . -benchtime 3x ./...

clean: ## remove build outputs
	rm -rf build
