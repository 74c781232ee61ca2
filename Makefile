# The README's commands. `make test` is what .ci/run runs.
GO ?= go
TEST_TIMEOUT ?= 40m
# The packages whose tests also run on Apache Kafka (scripts/kafka) in `make test`.
KAFKA_TIER ?= ./consumers/runtime ./consumers/offsets ./consumers/sender ./producers/relay ./internal/kafkaio ./cmd/fedpipe

.PHONY: run test test-kafka test-synapse build bench

run:
	@./scripts/install-postgres >/dev/null || echo 'make run: no PostgreSQL server binaries; fedpipe needs database.url' >&2
	$(GO) run ./cmd/fedpipe run

build:
	$(GO) build -o bin/fedpipe ./cmd/fedpipe

test:
	@./scripts/ensure-postgres >/dev/null
	@./scripts/install-test-tools || true  # chromium, docker-compose, kcat: their tests skip without them
	test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: files above need formatting'; exit 1; }
	$(GO) vet ./...
	FEDPIPE_TEST_DATABASE_URL="$$(./scripts/ensure-postgres)" $(GO) test -race -timeout $(TEST_TIMEOUT) ./...
	$(GO) test -race -run TestClassic github.com/twmb/franz-go/pkg/kfake  # the embedded broker's patch (third_party/kfake/FEDPIPE.md)
	@$(MAKE) --no-print-directory test-kafka
	@$(MAKE) --no-print-directory test-synapse

# The tier against a real Synapse from PyPI (scripts/synapse: installed once under
# /var/cache/fedpipe, about 50 s; started in about 3 s, stopped afterwards).
test-synapse:
	@./scripts/ensure-postgres >/dev/null
	./scripts/synapse start >/dev/null
	export $$(./scripts/synapse env); FEDPIPE_TEST_DATABASE_URL="$$(./scripts/ensure-postgres)" \
	  $(GO) test -race -count=1 -v -run '^TestSynapse' -timeout 10m ./cmd/fedpipe; \
	  status=$$?; ./scripts/synapse stop; exit $$status

# The Apache Kafka tier: a fresh single-node broker, stopped afterwards whatever the result;
# then a short crash soak on it, which restarts the broker process once (its stall bound
# allows for the broker's own restart, about 6 s, and its coordinator's reload: 60 s).
test-kafka:
	@./scripts/ensure-postgres >/dev/null
	./scripts/kafka start --fresh
	@start=$$(date +%s); brokers=$$(./scripts/kafka status) || exit 1; \
		FEDPIPE_TEST_KAFKA_BROKERS="$$brokers" FEDPIPE_TEST_DATABASE_URL="$$(./scripts/ensure-postgres)" \
		$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(KAFKA_TIER) && \
		$(GO) run ./cmd/fedpipe soak --kills=5 --rooms=30 --events=4000 --stall_bound=60s --log_level=warn --brokers="$$brokers" --broker_restart="./scripts/kafka restart"; rc=$$?; \
		./scripts/kafka stop; echo "Apache Kafka tier: $$(( $$(date +%s) - start )) s"; exit $$rc

bench:
	FEDPIPE_TEST_DATABASE_URL="$$(./scripts/ensure-postgres)" $(GO) test -run '^$$' -bench . -benchmem -timeout 120m ./...
