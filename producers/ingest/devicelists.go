package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/go-kit/kit/endpoint"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fedpipe/fedpipe/producers/outbox"
)

// DeviceListsPath takes changes of local users' devices and cross-signing
// keys:
//
//	POST /_fedpipe/v1/device_lists
//	{"devices": [{"user_id": "@a:hs", "device_id": "DEV", "device_display_name": "phone", "keys": {...}},
//	             {"user_id": "@a:hs", "device_id": "OLD", "deleted": true}],
//	 "signing_keys": [{"user_id": "@a:hs", "master_key": {...}, "self_signing_key": {...}}]}
//	→ 200 {"positions": [11, 12, 13]}
//
// stored in one PostgreSQL transaction (outbox.UpdateDevices and
// UpdateSigningKeys), in request order, devices first. Every server sharing
// a room with the user gets them, with a prev_id chain, durably. Bad input is
// 400 naming the field, an update too large for an EDU 413; nothing is
// written then.
const DeviceListsPath = "/_fedpipe/v1/device_lists"

// DefaultMaxDeviceUpdates bounds the updates of one device_lists request.
const DefaultMaxDeviceUpdates = 1000

type wireDevice struct {
	UserID      string          `json:"user_id"`
	DeviceID    string          `json:"device_id"`
	DisplayName *string         `json:"device_display_name"`
	Keys        json.RawMessage `json:"keys"`
	Deleted     bool            `json:"deleted"`
}

type wireSigningKeys struct {
	UserID         string          `json:"user_id"`
	MasterKey      json.RawMessage `json:"master_key"`
	SelfSigningKey json.RawMessage `json:"self_signing_key"`
}

type deviceListsRequest struct {
	devices []outbox.DeviceUpdate
	signing []outbox.SigningKeyUpdate
}

func decodeDeviceLists(cfg Config) func(context.Context, *http.Request) (any, error) {
	return func(_ context.Context, r *http.Request) (any, error) {
		body, err := readBody(r, cfg.MaxBodyBytes)
		if err != nil {
			return nil, err
		}
		var w struct {
			Devices     []wireDevice      `json:"devices"`
			SigningKeys []wireSigningKeys `json:"signing_keys"`
		}
		if err := strictUnmarshal(body, &w); err != nil {
			return nil, badJSON("body", "%v", err)
		}
		if n := len(w.Devices) + len(w.SigningKeys); n == 0 || n > DefaultMaxDeviceUpdates {
			return nil, invalid("devices", "%d updates: send 1 to %d", n, DefaultMaxDeviceUpdates)
		}
		var req deviceListsRequest
		for _, d := range w.Devices {
			if string(d.Keys) == "null" {
				d.Keys = nil
			}
			req.devices = append(req.devices, outbox.DeviceUpdate{UserID: d.UserID, DeviceID: d.DeviceID, DisplayName: d.DisplayName, Keys: d.Keys, Deleted: d.Deleted})
		}
		for _, s := range w.SigningKeys {
			req.signing = append(req.signing, outbox.SigningKeyUpdate{UserID: s.UserID, MasterKey: nullToNil(s.MasterKey), SelfSigningKey: nullToNil(s.SelfSigningKey)})
		}
		return req, nil
	}
}

func nullToNil(raw json.RawMessage) json.RawMessage {
	if string(raw) == "null" {
		return nil
	}
	return raw
}

func makeDeviceListsEndpoint(pool *pgxpool.Pool, origin string, m *metrics) endpoint.Endpoint {
	return func(ctx context.Context, request any) (any, error) {
		req := request.(deviceListsRequest)
		var positions []int64
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			pos, err := outbox.UpdateDevices(ctx, tx, origin, req.devices)
			if err != nil {
				return err
			}
			positions = append([]int64{}, pos...)
			for i, s := range req.signing {
				p, err := outbox.UpdateSigningKeys(ctx, tx, origin, s)
				if err != nil {
					return prefixed(err, "signing_keys["+strconv.Itoa(i)+"].")
				}
				positions = append(positions, p)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		m.deviceLists.Add(float64(len(positions)))
		m.requests.WithLabelValues("200").Inc()
		return persistResponse{Positions: positions}, nil
	}
}

// prefixed puts prefix before the field a validation error names.
func prefixed(err error, prefix string) error {
	var ve *outbox.ValidationError
	if errors.As(err, &ve) {
		ve.Field = prefix + ve.Field
	}
	return err
}
