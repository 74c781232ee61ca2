package router

import (
	"context"
	"fmt"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/schema"
)

// maxDeviceListBatch bounds the device-list records routed together (one
// barrier wait, one destination query).
const maxDeviceListBatch = 500

// deviceListHandler routes one partition of <prefix>.devicelists: each
// update of a local user's device or signing keys goes to every remote
// server sharing a room with the user, judged, like presence, on membership
// at least as new as the update (the room barrier: the relay publishes the
// room stream first). The sender keeps each durably per destination.
type deviceListHandler struct {
	r     *Router
	batch runtime.Batch[*schema.DeviceListRecord]
}

func newDeviceListHandler(r *Router) *deviceListHandler {
	h := &deviceListHandler{r: r}
	h.batch = runtime.Batch[*schema.DeviceListRecord]{Max: maxDeviceListBatch, Flush: h.flush}
	return h
}

func (h *deviceListHandler) Handle(ctx context.Context, m kafka.Message, done func()) error {
	rec, err := schema.DecodeDeviceListRecord(m.Value)
	if err != nil {
		if ferr := h.batch.FlushKept(ctx); ferr != nil {
			return ferr
		}
		return runtime.Poison(err)
	}
	var kept *schema.DeviceListRecord
	if server, _ := mxid.ServerOf(rec.UserID); server == h.r.cfg.ServerName {
		kept = &rec
	} else {
		h.r.m.deviceLists.WithLabelValues("not_local").Inc() // their own servers tell theirs
	}
	return h.batch.Add(ctx, m, kept, done)
}

func (h *deviceListHandler) flush(ctx context.Context, kept []*schema.DeviceListRecord, allDone func()) error {
	var users []string
	seen := map[string]bool{}
	for _, rec := range kept {
		if rec != nil && !seen[rec.UserID] {
			seen[rec.UserID] = true
			users = append(users, rec.UserID)
		}
	}
	if len(users) == 0 {
		allDone()
		return nil
	}
	if b := h.r.barrier; b != nil {
		if err := b.wait(ctx); err != nil {
			return fmt.Errorf("waiting for the room records before device-list updates: %w", err)
		}
	}
	dests, err := h.r.store.presenceDestinations(ctx, users, h.r.cfg.ServerName)
	if err != nil {
		return err
	}
	var msgs []kafka.Message
	for _, rec := range kept {
		if rec == nil {
			continue
		}
		for _, d := range dests.byUser[rec.UserID] {
			m, err := deviceListMessage(*rec, d, h.r.cfg.Instance)
			if err != nil {
				return runtime.Poison(err)
			}
			msgs = append(msgs, m)
		}
	}
	if len(msgs) == 0 {
		allDone()
		return nil
	}
	if err := h.r.out.Write(ctx, msgs, allDone); err != nil {
		return fmt.Errorf("writing device-list updates of %d users: %w", len(users), err)
	}
	h.r.m.deviceLists.WithLabelValues("routed").Add(float64(len(msgs)))
	return nil
}

// deviceListMessage is rec's outbound record for dest.
func deviceListMessage(rec schema.DeviceListRecord, dest, instance string) (kafka.Message, error) {
	v, err := schema.OutboundRecord{V: schema.SchemaVersion, Kind: schema.KindDeviceList, Destination: dest, Position: rec.Position,
		UserID: rec.UserID, DeviceID: rec.DeviceID, EDUType: rec.EDUType, Content: rec.Content}.Marshal()
	if err != nil {
		return kafka.Message{}, fmt.Errorf("encoding the device-list update of %s for %s: %w", rec.UserID, dest, err)
	}
	return schema.NewHeaders(schema.KindDeviceList).WithPosition(rec.Position).WithInstance(instance).Message([]byte(dest), v), nil
}

// Close abandons kept records (they are not done: redelivered to the next
// owner) and waits for what was written (see partitionHandler.Close).
func (h *deviceListHandler) Close(ctx context.Context) error {
	h.batch.Close()
	return h.r.out.Settle(ctx)
}
