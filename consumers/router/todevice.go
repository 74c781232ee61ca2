package router

import (
	"context"
	"fmt"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/schema"
)

// toDeviceHandler routes one partition of <prefix>.todevice: a to_device
// record already names its destination (the recipient's server, chosen when
// the message was stored), so it goes to <prefix>.outbound as it is, keyed by
// the destination so that the member owning the destination gets it. The
// record's bytes are not re-encoded.
type toDeviceHandler struct {
	r *Router
}

func (h *toDeviceHandler) Handle(ctx context.Context, m kafka.Message, done func()) error {
	rec, err := schema.DecodeOutboundRecord(m.Value)
	if err != nil {
		return runtime.Poison(err)
	}
	if rec.Kind != schema.KindToDevice {
		return runtime.Poison(fmt.Errorf("%w: a %q record on the to-device topic", schema.ErrInvalidRecord, rec.Kind))
	}
	if rec.Destination == h.r.cfg.ServerName {
		// The homeserver delivers its own users' messages; the producer
		// library leaves them out, a foreign producer may not have.
		h.r.m.toDevice.WithLabelValues("ours").Inc()
		done()
		return nil
	}
	out := kafka.Message{Key: []byte(rec.Destination), Value: m.Value, Headers: m.Headers}
	if err := h.r.out.Write(ctx, []kafka.Message{out}, done); err != nil {
		return fmt.Errorf("writing to-device message %s for %s: %w", rec.MessageID, rec.Destination, err)
	}
	h.r.m.toDevice.WithLabelValues("routed").Inc()
	return nil
}

// Close waits for the records written to be acknowledged (see partitionHandler.Close).
func (h *toDeviceHandler) Close(ctx context.Context) error { return h.r.out.Settle(ctx) }
