package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

func TestOffsetsCommandPlansThenExecutes(t *testing.T) {
	c, addr := testenv.Broker(t)
	if err := c.CreateTopic("in", 1, nil); err != nil {
		t.Fatal(err)
	}
	w := &kafka.Writer{Addr: kafka.TCP(addr), Topic: "in", RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(context.Background(), make([]kafka.Message, 6)...); err != nil {
		t.Fatal(err)
	}
	brokers := "--kafka.brokers=" + addr
	row := func(out string, fields ...string) bool {
		return regexp.MustCompile(`(?m)^` + strings.Join(fields, `\s+`) + `\s*$`).MatchString(out)
	}

	out, err := run(t, "offsets", "reset", brokers, "--group", "g", "--topic", "in", "--to-offset", "4")
	if err != nil || !row(out, "g", "in", "0", "-", "4", "2") || !strings.Contains(out, "Dry run: nothing changed") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	out, err = run(t, "offsets", "show", brokers, "--group", "g", "--topic", "in:0")
	if err != nil || !row(out, "g", "in", "0", "-", "0", "6", "6", "-") {
		t.Fatalf("after a dry run the group must have no offset: %v\n%s", err, out)
	}
	out, err = run(t, "offsets", "reset", brokers, "--group", "g", "--topic", "in", "--shift-by", "-2", "--execute")
	if err != nil || !row(out, "g", "in", "0", "-", "0", "6") || !strings.Contains(out, "Committed") {
		t.Fatalf("execute: %v\n%s", err, out)
	}
	out, err = run(t, "offsets", "reset", brokers, "--group", "g", "--all-topics", "--to-latest", "--execute")
	if err != nil || !row(out, "g", "in", "0", "0", "6", "0") {
		t.Fatalf("execute to latest: %v\n%s", err, out)
	}
	out, err = run(t, "offsets", "show", brokers, "--group", "g", "--all-topics")
	if err != nil || !row(out, "g", "in", "0", "6", "0", "6", "0", "-") {
		t.Fatalf("show after execute: %v\n%s", err, out)
	}
	for _, bad := range [][]string{
		{"offsets", "reset", brokers, "--group", "g", "--topic", "in"},                                 // no spec
		{"offsets", "reset", brokers, "--group", "g", "--topic", "in", "--to-earliest", "--to-latest"}, // two
		{"offsets", "reset", brokers, "--group", "g", "--topic", "in", "--shift-by", "x"},
		{"offsets", "reset", brokers, "--group", "g", "--topic", "in", "--by-duration", "1h"},
		{"offsets", "show", brokers, "--topic", "in"},                                 // no group
		{"offsets", "show", brokers, "--group", "g"},                                  // no topics
		{"offsets", "show", brokers, "--group", "g", "--topic", "in", "--all-topics"}, // both
		{"offsets", "show", brokers, "--group", "g", "--topic", "in:9"},               // no such partition
		{"offsets", "rewind"},
	} {
		if out, err := run(t, bad...); err == nil {
			t.Errorf("%v accepted:\n%s", bad, out)
		}
	}
}
