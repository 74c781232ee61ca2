# The README's commands. `make test` is what .ci/run runs.
GO ?= go
TEST_TIMEOUT ?= 40m

.PHONY: run test build bench

run:
	@./scripts/install-postgres >/dev/null || echo 'make run: no PostgreSQL server binaries; fedpipe needs database.url' >&2
	$(GO) run ./cmd/fedpipe run

build:
	$(GO) build -o bin/fedpipe ./cmd/fedpipe

test:
	@./scripts/ensure-postgres >/dev/null
	test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: files above need formatting'; exit 1; }
	$(GO) vet ./...
	FEDPIPE_TEST_DATABASE_URL="$$(./scripts/ensure-postgres)" $(GO) test -race -timeout $(TEST_TIMEOUT) ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem -timeout 30m ./...
