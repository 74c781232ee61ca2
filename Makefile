# The README's commands. `make test` is what .ci/run runs.
GO ?= go
TEST_TIMEOUT ?= 40m
# The packages whose tests also run on Apache Kafka (scripts/kafka) in `make test`.
KAFKA_TIER ?= ./consumers/runtime ./consumers/sender ./producers/relay ./internal/kafkaio ./cmd/fedpipe

.PHONY: run test test-kafka build vet bench

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
	@$(MAKE) --no-print-directory test-kafka

# The Apache Kafka tier: a fresh single-node broker, stopped afterwards whatever the result.
test-kafka:
	@./scripts/ensure-postgres >/dev/null
	./scripts/kafka start --fresh
	@start=$$(date +%s); brokers=$$(./scripts/kafka status) || exit 1; \
		FEDPIPE_TEST_KAFKA_BROKERS="$$brokers" FEDPIPE_TEST_DATABASE_URL="$$(./scripts/ensure-postgres)" \
		$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(KAFKA_TIER); rc=$$?; \
		./scripts/kafka stop; echo "Apache Kafka tier: $$(( $$(date +%s) - start )) s"; exit $$rc

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...
