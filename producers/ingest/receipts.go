package ingest

import (
	"context"
	"net/http"

	"github.com/go-kit/kit/endpoint"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fedpipe/fedpipe/producers/outbox"
)

// ReceiptsPath takes local users' read receipts:
//
//	POST /_fedpipe/v1/receipts
//	{"receipts": [{"room_id": "!r:hs", "receipt_type": "m.read", "user_id": "@a:hs",
//	               "event_ids": ["$e"], "thread_id": "main", "ts": 1700000000000}]}
//	→ 200 {"positions": [21]}
//
// stored in one PostgreSQL transaction (outbox.PutReceipts): m.read receipts
// go to the servers in the room; m.read.private ones are accepted and never
// written (no position). Bad input is 400 naming the field; nothing is
// written then.
const ReceiptsPath = "/_fedpipe/v1/receipts"

// DefaultMaxReceipts bounds the receipts of one request.
const DefaultMaxReceipts = 1000

type wireReceipt struct {
	RoomID      string   `json:"room_id"`
	ReceiptType string   `json:"receipt_type"`
	UserID      string   `json:"user_id"`
	EventIDs    []string `json:"event_ids"`
	ThreadID    string   `json:"thread_id"`
	TS          int64    `json:"ts"`
}

func decodeReceipts(cfg Config) func(context.Context, *http.Request) (any, error) {
	return func(_ context.Context, r *http.Request) (any, error) {
		body, err := readBody(r, cfg.MaxBodyBytes)
		if err != nil {
			return nil, err
		}
		var w struct {
			Receipts []wireReceipt `json:"receipts"`
		}
		if err := strictUnmarshal(body, &w); err != nil {
			return nil, badJSON("body", "%v", err)
		}
		if n := len(w.Receipts); n == 0 || n > DefaultMaxReceipts {
			return nil, invalid("receipts", "%d receipts: send 1 to %d", n, DefaultMaxReceipts)
		}
		out := make([]outbox.Receipt, len(w.Receipts))
		for i, x := range w.Receipts {
			out[i] = outbox.Receipt{RoomID: x.RoomID, Type: x.ReceiptType, UserID: x.UserID, EventIDs: x.EventIDs, ThreadID: x.ThreadID, TS: x.TS}
		}
		return out, nil
	}
}

func makeReceiptsEndpoint(pool *pgxpool.Pool, origin string, m *metrics) endpoint.Endpoint {
	return func(ctx context.Context, request any) (any, error) {
		var positions []int64
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			var err error
			positions, err = outbox.PutReceipts(ctx, tx, origin, request.([]outbox.Receipt))
			return err
		})
		if err != nil {
			return nil, err
		}
		m.receipts.Add(float64(len(positions)))
		m.requests.WithLabelValues("200").Inc()
		return persistResponse{Positions: positions}, nil
	}
}
