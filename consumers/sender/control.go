package sender

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// ControlChannel is the PostgreSQL NOTIFY channel operators' changes to a
// destination travel on. The admin API changes sender_destinations and
// notifies in the same transaction, so a member is only told once the change
// is visible to it, and every member of the sender group hears every signal:
// the one that owns the destination acts, the others ignore it.
const ControlChannel = "fedpipe_sender_control"

// Control operations carried by a ControlSignal.
const (
	// OpReset: the destination's backoff was cleared; try it now.
	OpReset = "reset"
	// OpPause: send nothing to the destination until resumed.
	OpPause = "pause"
	// OpResume: the destination may be sent to again.
	OpResume = "resume"
)

// ControlSignal is the payload of a notification on ControlChannel (JSON).
type ControlSignal struct {
	Op          string `json:"op"`
	Destination string `json:"destination"`
}

// Controller is what the listener drives: the queue manager of this member.
// Both calls must return at once (they are made from the listener's loop) and
// must ignore destinations this member does not own; the durable state
// (sender_destinations) has already been changed by whoever signalled, so a
// destination opened later reads it from there.
type Controller interface {
	// ResetBackoff forgets the destination's backoff and wakes it, so what it
	// has waiting (live records and catch-up) is sent now.
	ResetBackoff(dest string)
	// SetPaused stops (true) or restarts (false) sending to the destination.
	SetPaused(dest string, paused bool)
	// CatchUp makes the destination catch up from the store (rooms to send
	// again were recorded) before it sends live again.
	CatchUp(dest string)
}

// Execer runs a statement; pgx.Tx, *pgx.Conn and *pgxpool.Pool implement it.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Signal queues a notification of op for dest on ControlChannel. Called inside
// the transaction that changes sender_destinations, it is delivered when that
// transaction commits, and not at all if it rolls back.
func Signal(ctx context.Context, db Execer, op, dest string) error {
	payload, err := json.Marshal(ControlSignal{Op: op, Destination: dest})
	if err != nil {
		return err
	}
	if _, err := db.Exec(ctx, "SELECT pg_notify($1, $2)", ControlChannel, string(payload)); err != nil {
		return fmt.Errorf("signalling %s of %s: %w", op, dest, err)
	}
	return nil
}

// ControlListener listens on ControlChannel and calls its Controller.
type ControlListener struct {
	pool    *pgxpool.Pool
	ctl     Controller
	log     *slog.Logger
	signals *prometheus.CounterVec
	// retry is the pause before listening again after the connection failed.
	retry time.Duration
	// listening, when set, is called each time LISTEN has taken effect (tests).
	listening func()
}

// NewControlListener returns a listener calling ctl for every signal.
func NewControlListener(pool *pgxpool.Pool, ctl Controller, log *slog.Logger, reg prometheus.Registerer) (*ControlListener, error) {
	signals := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedpipe_sender_control_signals_total",
		Help: "Operator signals (reset, pause, resume) heard on the control channel, by op; invalid ones as op=\"invalid\"."}, []string{"op"})
	if err := reg.Register(signals); err != nil {
		return nil, fmt.Errorf("registering the control listener's metrics: %w", err)
	}
	return &ControlListener{pool: pool, ctl: ctl, log: log, signals: signals, retry: time.Second}, nil
}

// Run listens until ctx ends. A lost connection is logged and listened on
// again after a second: a signal sent meanwhile is missed by this member, but
// not lost, since the state it announces is in sender_destinations, read when
// the destination's queue is next loaded (pauses and resets then take effect
// at the next attempt instead of within a second).
func (l *ControlListener) Run(ctx context.Context) error {
	for {
		err := l.listen(ctx)
		if ctx.Err() != nil {
			return nil
		}
		l.log.Warn("listening for operator signals failed; listening again", "channel", ControlChannel, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(l.retry):
		}
	}
}

func (l *ControlListener) listen(ctx context.Context) error {
	pc, err := l.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquiring a connection: %w", err)
	}
	// Taken out of the pool and closed afterwards: returned, it would keep the
	// LISTEN and queue notifications for whoever borrows it next.
	conn := pc.Hijack()
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ControlChannel}.Sanitize()); err != nil {
		return fmt.Errorf("listening on %s: %w", ControlChannel, err)
	}
	if l.listening != nil {
		l.listening()
	}
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		l.handle(n.Payload)
	}
}

func (l *ControlListener) handle(payload string) {
	var s ControlSignal
	if err := json.Unmarshal([]byte(payload), &s); err != nil || s.Destination == "" {
		l.signals.WithLabelValues("invalid").Inc()
		l.log.Warn("ignoring an invalid operator signal", "payload", payload, "err", err)
		return
	}
	switch s.Op {
	case OpReset:
		l.ctl.ResetBackoff(s.Destination)
	case OpPause:
		l.ctl.SetPaused(s.Destination, true)
	case OpResume:
		l.ctl.SetPaused(s.Destination, false)
	case OpCatchUp:
		l.ctl.CatchUp(s.Destination)
	default:
		l.signals.WithLabelValues("invalid").Inc()
		l.log.Warn("ignoring an operator signal of unknown op", "payload", payload)
		return
	}
	l.signals.WithLabelValues(s.Op).Inc()
	l.log.Info("operator signal", "op", s.Op, "destination", s.Destination)
}
