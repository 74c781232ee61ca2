package ingest

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/go-kit/kit/endpoint"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fedpipe/fedpipe/producers/outbox"
)

// ToDevicePath takes a to-device message for remote devices:
//
//	POST /_fedpipe/v1/to_device
//	{"sender": "@a:hs", "type": "m.room_key_request", "message_id": "abc",
//	 "messages": {"@b:remote": {"DEVICE": {...}, "*": {...}}}}
//	→ 200 {"positions": [7, 8]}
//
// It is stored in one PostgreSQL transaction (outbox.SendToDevice: one
// device_federation_outbox row per destination and EDU, users of
// Config.ServerName left out) and delivered at least once, in order per
// destination, through backoff and restarts. Bad input is 400 naming the
// field; a message for one device that no 64 KiB EDU could carry is 413;
// nothing is written then. Sending the same message_id again sends it again
// (receivers deduplicate by it).
const ToDevicePath = "/_fedpipe/v1/to_device"

// wireToDevice is the body of POST ToDevicePath.
type wireToDevice struct {
	Sender    string                                `json:"sender"`
	Type      string                                `json:"type"`
	MessageID string                                `json:"message_id"`
	Messages  map[string]map[string]json.RawMessage `json:"messages"`
}

func decodeToDevice(cfg Config) func(context.Context, *http.Request) (any, error) {
	return func(_ context.Context, r *http.Request) (any, error) {
		body, err := readBody(r, cfg.MaxBodyBytes)
		if err != nil {
			return nil, err
		}
		var w wireToDevice
		if err := strictUnmarshal(body, &w); err != nil {
			return nil, badJSON("body", "%v", err)
		}
		return outbox.ToDevice{Sender: w.Sender, Type: w.Type, MessageID: w.MessageID, Messages: w.Messages}, nil
	}
}

func makeToDeviceEndpoint(pool *pgxpool.Pool, origin string, m *metrics) endpoint.Endpoint {
	return func(ctx context.Context, request any) (any, error) {
		positions, err := outbox.SendToDeviceBatch(ctx, pool, origin, request.(outbox.ToDevice))
		if err != nil {
			return nil, err
		}
		m.toDevice.Add(float64(len(positions)))
		m.requests.WithLabelValues("200").Inc()
		if positions == nil {
			positions = []int64{} // every recipient was local
		}
		return persistResponse{Positions: positions}, nil
	}
}
