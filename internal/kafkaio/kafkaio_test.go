package kafkaio_test

import (
	"context"
	"log/slog"
	"testing"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/testenv"
)

func TestCreateTopicsIdempotent(t *testing.T) {
	c, addr := testenv.Broker(t)
	cfg := kafkaio.TopicsConfig{Prefix: "fp", Partitions: 3, OutboundPartitions: 5}
	for i := 0; i < 2; i++ {
		if err := kafkaio.CreateTopics(context.Background(), []string{addr}, cfg, slog.New(slog.DiscardHandler)); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
	}
	if got := len(c.PartitionInfos("fp.outbound")); got != 5 {
		t.Fatalf("outbound has %d partitions, want 5", got)
	}
	if got := len(c.PartitionInfos("fp.room")); got != 3 {
		t.Fatalf("room has %d partitions, want 3", got)
	}
	info := c.TopicInfo("fp.state")
	if info == nil || info.Configs["cleanup.policy"] == nil || *info.Configs["cleanup.policy"] != "compact" {
		t.Fatalf("state topic is not compacted: %+v", info)
	}
	if n, err := kafkaio.Partitions(context.Background(), []string{addr}, "fp.outbound"); err != nil || n != 5 {
		t.Errorf("Partitions(fp.outbound) = %d, %v; want 5", n, err)
	}
	if n, err := kafkaio.Partitions(context.Background(), []string{addr}, "fp.missing"); err == nil {
		t.Errorf("Partitions of a missing topic = %d, want an error", n)
	}
}
