package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
)

// Headers added when a record is dead-lettered (consumers/runtime for
// records consumed, its batch writer and the relay for records that could not
// be written); a re-driven record is written back without them.
var deadLetterHeaders = []string{"deadletter_reason", "source_topic", "source_partition", "source_offset", "deadletter_group",
	"deadletter_instance", "deadletter_writer", "deadletter_value_bytes"}

// scanLimit bounds how many of the newest dead letters a count reads to split
// them by source topic (the total comes from the partitions' ends).
const scanLimit = 10_000

// Header is one record header.
type Header struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// DeadLetter is a record of the dead-letter topic.
type DeadLetter struct {
	Partition   int       `json:"partition"`
	Offset      int64     `json:"offset"`
	Time        time.Time `json:"time"`
	SourceTopic string    `json:"source_topic"`
	Reason      string    `json:"reason"`
	Key         string    `json:"key"`
	Value       string    `json:"value"`
	Headers     []Header  `json:"headers"`
	// headers as Kafka wants them, for a re-drive.
	raw []kafka.Header
}

func (d *DeadLetter) header(key string) string {
	for _, h := range d.Headers {
		if h.Key == key {
			return h.Value
		}
	}
	return ""
}

// DeadLetterSummary is the dead-letter topic at a glance.
type DeadLetterSummary struct {
	Topic string `json:"topic"`
	// Total is every dead letter the topic holds (partition ends minus starts).
	Total int64 `json:"total"`
	// BySourceTopic counts the newest Scanned of them by their source topic.
	BySourceTopic map[string]int64 `json:"by_source_topic"`
	Scanned       int64            `json:"scanned"`
	// Latest are the newest, newest first.
	Latest []DeadLetter `json:"latest"`
}

// GET /_fedpipe/admin/v1/deadletters?limit=N (default 20, at most 1000)
func (s *Server) deadLetters(w http.ResponseWriter, r *http.Request) error {
	limit := 20
	if l := r.URL.Query().Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 0 || n > 1000 {
			return badParam(`Query parameter "limit" must be an integer from 0 to 1000`)
		}
		limit = n
	}
	sum, err := s.deadLetterSummary(r.Context(), limit)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sum)
	return nil
}

type partitionRange struct {
	partition  int
	start, end int64
}

func (s *Server) deadLetterRanges(ctx context.Context) ([]partitionRange, error) {
	topic := s.cfg.DeadLetterTopic
	meta, err := s.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("reading the partitions of %s: %w", topic, err)
	}
	var reqs []kafka.OffsetRequest
	for _, t := range meta.Topics {
		if t.Error != nil {
			return nil, fmt.Errorf("reading the partitions of %s: %w", topic, t.Error)
		}
		for _, p := range t.Partitions {
			reqs = append(reqs, kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
		}
	}
	resp, err := s.listOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("listing the offsets of %s: %w", topic, err)
	}
	var out []partitionRange
	for _, p := range resp.Topics[topic] {
		out = append(out, partitionRange{p.Partition, p.FirstOffset, p.LastOffset})
	}
	slices.SortFunc(out, func(a, b partitionRange) int { return a.partition - b.partition })
	return out, nil
}

func (s *Server) deadLetterSummary(ctx context.Context, limit int) (DeadLetterSummary, error) {
	sum := DeadLetterSummary{Topic: s.cfg.DeadLetterTopic, BySourceTopic: map[string]int64{}, Latest: []DeadLetter{}}
	ranges, err := s.deadLetterRanges(ctx)
	if err != nil {
		return sum, err
	}
	for _, r := range ranges {
		sum.Total += r.end - r.start
	}
	if sum.Total == 0 {
		return sum, nil
	}
	per := max(int64(scanLimit/len(ranges)), 1)
	var all []DeadLetter
	for _, r := range ranges {
		from := max(r.start, r.end-per)
		recs, err := s.readDeadLetters(ctx, r.partition, from, r.end)
		if err != nil {
			return sum, err
		}
		all = append(all, recs...)
	}
	for _, d := range all {
		sum.BySourceTopic[d.SourceTopic]++
	}
	sum.Scanned = int64(len(all))
	slices.SortFunc(all, func(a, b DeadLetter) int {
		if c := b.Time.Compare(a.Time); c != 0 {
			return c
		}
		return int(b.Offset - a.Offset)
	})
	sum.Latest = all[:min(limit, len(all))]
	return sum, nil
}

// readDeadLetters reads partition's records in [from, to).
func (s *Server) readDeadLetters(ctx context.Context, partition int, from, to int64) ([]DeadLetter, error) {
	var out []DeadLetter
	for off := from; off < to; {
		resp, err := s.client.Fetch(ctx, &kafka.FetchRequest{Topic: s.cfg.DeadLetterTopic, Partition: partition, Offset: off, MaxBytes: 4 << 20, MaxWait: 100 * time.Millisecond})
		if err != nil {
			return nil, fmt.Errorf("reading %s/%d at %d: %w", s.cfg.DeadLetterTopic, partition, off, err)
		}
		if resp.Error != nil {
			return nil, fmt.Errorf("reading %s/%d at %d: %w", s.cfg.DeadLetterTopic, partition, off, resp.Error)
		}
		next := off
		for {
			rec, err := resp.Records.ReadRecord()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("reading %s/%d at %d: %w", s.cfg.DeadLetterTopic, partition, off, err)
			}
			if rec.Offset < off || rec.Offset >= to {
				continue
			}
			d, err := deadLetter(partition, rec)
			if err != nil {
				return nil, err
			}
			out = append(out, d)
			next = rec.Offset + 1
		}
		if next == off { // nothing readable here (a compacted or aborted gap): step over it
			next = off + 1
		}
		off = next
	}
	return out, nil
}

func deadLetter(partition int, rec *kafka.Record) (DeadLetter, error) {
	d := DeadLetter{Partition: partition, Offset: rec.Offset, Time: rec.Time, raw: rec.Headers, Headers: []Header{}}
	for _, h := range rec.Headers {
		d.Headers = append(d.Headers, Header{h.Key, string(h.Value)})
	}
	for _, b := range []struct {
		bytes kafka.Bytes
		to    *string
	}{{rec.Key, &d.Key}, {rec.Value, &d.Value}} {
		if b.bytes == nil {
			continue
		}
		v, err := io.ReadAll(b.bytes)
		if err != nil {
			return d, fmt.Errorf("reading dead letter %d/%d: %w", partition, rec.Offset, err)
		}
		*b.to = string(v)
	}
	d.SourceTopic = d.header("source_topic")
	d.Reason = d.header("deadletter_reason")
	return d, nil
}

// RedriveRequest names dead letters by partition and offset.
type RedriveRequest struct {
	Records []struct {
		Partition *int   `json:"partition"`
		Offset    *int64 `json:"offset"`
	} `json:"records"`
}

// POST /_fedpipe/admin/v1/deadletters/redrive {"records":[{"partition":P,"offset":O}]}
//
// Writes each named dead letter's key, value and original headers back to its
// source topic (keyed as before, so to the same partition), after checking
// every one exists and names a topic of fedpipe's; nothing is written when one
// does not. Re-driving a record twice writes it twice.
func (s *Server) redrive(w http.ResponseWriter, r *http.Request) error {
	var req RedriveRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return &apiError{http.StatusBadRequest, "M_BAD_JSON", "Invalid request body: " + err.Error()}
	}
	if len(req.Records) == 0 || len(req.Records) > 1000 {
		return &apiError{http.StatusBadRequest, "M_INVALID_PARAM", "records must name 1 to 1000 dead letters"}
	}
	ranges, err := s.deadLetterRanges(r.Context())
	if err != nil {
		return err
	}
	msgs := make([]kafka.Message, 0, len(req.Records))
	for i, rr := range req.Records {
		if rr.Partition == nil || rr.Offset == nil {
			return &apiError{http.StatusBadRequest, "M_INVALID_PARAM", fmt.Sprintf("records[%d]: partition and offset are required", i)}
		}
		p, off := *rr.Partition, *rr.Offset
		ri := slices.IndexFunc(ranges, func(pr partitionRange) bool { return pr.partition == p })
		if ri < 0 || off < ranges[ri].start || off >= ranges[ri].end {
			return notFound(fmt.Sprintf("No dead letter at partition %d offset %d", p, off))
		}
		recs, err := s.readDeadLetters(r.Context(), p, off, off+1)
		if err != nil {
			return err
		}
		if len(recs) != 1 {
			return notFound(fmt.Sprintf("No dead letter at partition %d offset %d", p, off))
		}
		d := recs[0]
		if !slices.Contains(s.cfg.RedriveTopics, d.SourceTopic) {
			return &apiError{http.StatusBadRequest, "M_INVALID_PARAM",
				fmt.Sprintf("dead letter %d/%d: source_topic %q is not one of fedpipe's topics %v", p, off, d.SourceTopic, s.cfg.RedriveTopics)}
		}
		if d.header("deadletter_value_bytes") != "" {
			return &apiError{http.StatusBadRequest, "M_INVALID_PARAM",
				fmt.Sprintf("dead letter %d/%d holds only the first part of its value (%s bytes): it cannot be re-driven", p, off, d.header("deadletter_value_bytes"))}
		}
		m := kafka.Message{Topic: d.SourceTopic, Value: []byte(d.Value)}
		if d.Key != "" {
			m.Key = []byte(d.Key)
		}
		for _, h := range d.raw {
			if !slices.Contains(deadLetterHeaders, h.Key) {
				m.Headers = append(m.Headers, h)
			}
		}
		msgs = append(msgs, m)
	}
	if err := s.writer.WriteMessages(r.Context(), msgs...); err != nil {
		return fmt.Errorf("re-driving %d dead letters: %w", len(msgs), err)
	}
	by := map[string]int{}
	for _, m := range msgs {
		by[m.Topic]++
		s.m.redriven.WithLabelValues(m.Topic).Inc()
	}
	s.log.Info("dead letters re-driven by an operator", "records", len(msgs), "by_topic", by)
	writeJSON(w, http.StatusOK, map[string]any{"redriven": len(msgs), "by_topic": by})
	return nil
}
