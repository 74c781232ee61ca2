# The README's commands. `make test` is what .ci/run runs.
GO ?= go
TEST_TIMEOUT ?= 40m

.PHONY: run test build vet bench

run:
	$(GO) run ./cmd/fedpipe run

build:
	$(GO) build -o bin/fedpipe ./cmd/fedpipe

test:
	./scripts/ensure-postgres
	test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: files above need formatting'; exit 1; }
	$(GO) vet ./...
	$(GO) test -race -timeout $(TEST_TIMEOUT) ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...
