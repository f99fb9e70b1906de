# hearth — common tasks. `make test` is the test command CI runs.
GO ?= go
BIN ?= bin

.PHONY: all build test lint demo run bench clean

all: lint test build

build:
	$(GO) build -o $(BIN)/ ./cmd/hearth ./cmd/hearth-fcsim
	CGO_ENABLED=0 $(GO) build -o $(BIN)/hearth-agent ./cmd/hearth-agent

test:
	$(GO) test -race -count=1 ./...

lint:
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...
	staticcheck ./...

# The main job: boot the default image (built from Debian packages, cached)
# on QEMU (Firecracker when installed) and run a command in it.
CMD ?= uname -a
run: build
	@command -v qemu-system-x86_64 >/dev/null 2>&1 && command -v mkfs.ext4 >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 e2fsprogs)
	$(BIN)/hearth image build default --agent $(BIN)/hearth-agent
	$(BIN)/hearth run -- $(CMD)

# The whole lifecycle on the in-memory backend (no guest, any machine).
demo:
	$(GO) run ./cmd/hearth demo

# Benchmarks, each against a baseline in the same run (root for some).
# The control-plane and daemon benchmarks collect their own samples in one
# iteration; the others take three. BENCH_NOTE goes into the report.
BENCH_ONCE = ^Benchmark(ControlPlane|RuntimeConcurrency|DaemonScale|VMMSpawn)$$
bench:
	@samples=$$(mktemp -d) && trap 'rm -rf '$$samples EXIT && \
	{ HEARTH_BENCH_SAMPLES=$$samples $(GO) test -run '^$$' -bench '$(BENCH_ONCE)' -benchtime 1x -timeout 60m ./bench/ && \
	  $(GO) test -run '^$$' -bench . -skip '$(BENCH_ONCE)' -benchtime 3x -timeout 60m ./bench/; } | \
	$(GO) run ./bench/report -out bench -samples $$samples -notes bench/notes.md -note "$(BENCH_NOTE)"

clean:
	rm -rf $(BIN)
