package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fedpipe/fedpipe/producers/outbox"
)

// Outbox converts events for the Go producer library.
func Outbox(batch []Event) []outbox.EventWithDeltas {
	out := make([]outbox.EventWithDeltas, len(batch))
	for i, ev := range batch {
		out[i] = outbox.EventWithDeltas{Event: outbox.Event{
			EventID: ev.EventID, RoomID: ev.RoomID, RoomVersion: ev.RoomVersion, Sender: ev.Sender,
			Type: ev.Type, StateKey: ev.StateKey, PDU: ev.PDU,
		}}
		for _, d := range ev.Deltas {
			out[i].Deltas = append(out[i].Deltas, outbox.StateDelta{RoomID: ev.RoomID, Type: d.Type, StateKey: d.StateKey,
				EventID: d.EventID, PrevEventID: d.PrevEventID, Membership: d.Membership, PrevMembership: d.PrevMembership})
		}
	}
	return out
}

// PoolPersister persists through the Go producer library, one transaction a batch.
func PoolPersister(pool *pgxpool.Pool) Persister {
	return func(ctx context.Context, batch []Event) error {
		_, err := outbox.PersistBatch(ctx, pool, Outbox(batch))
		return err
	}
}

type wireDelta struct {
	Type           string `json:"type"`
	StateKey       string `json:"state_key"`
	EventID        string `json:"event_id"`
	PrevEventID    string `json:"prev_event_id,omitempty"`
	Membership     string `json:"membership,omitempty"`
	PrevMembership string `json:"prev_membership,omitempty"`
}

type wireEvent struct {
	RoomVersion string          `json:"room_version"`
	EventID     string          `json:"event_id"`
	PDU         json.RawMessage `json:"pdu"`
	StateDeltas []wireDelta     `json:"state_deltas,omitempty"`
}

// HTTPPersister persists through the ingest API at url (POST /_fedpipe/v1/events).
func HTTPPersister(client *http.Client, url, token string) Persister {
	return func(ctx context.Context, batch []Event) error {
		req := struct {
			Events []wireEvent `json:"events"`
		}{}
		for _, ev := range batch {
			we := wireEvent{RoomVersion: ev.RoomVersion, EventID: ev.EventID, PDU: ev.PDU}
			for _, d := range ev.Deltas {
				we.StateDeltas = append(we.StateDeltas, wireDelta(d))
			}
			req.Events = append(req.Events, we)
		}
		body, err := json.Marshal(req)
		if err != nil {
			return err
		}
		hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		hreq.Header.Set("Content-Type", "application/json")
		if token != "" {
			hreq.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(hreq)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			return fmt.Errorf("ingest answered %d: %s", resp.StatusCode, msg)
		}
		return nil
	}
}
