# hearth — common tasks. `make test` is the test command CI runs.
GO ?= go
BIN ?= bin

.PHONY: all build test lint demo bench clean

all: lint test build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

test:
	$(GO) test -race -count=1 ./...

lint:
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...
	staticcheck ./...

# The main job until a VM can boot: the whole lifecycle on the in-memory backend.
demo:
	$(GO) run ./cmd/hearth demo

# Benchmarks, each against a baseline in the same run (root for some).
bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x ./bench/ | $(GO) run ./bench/report -out bench

clean:
	rm -rf $(BIN)
