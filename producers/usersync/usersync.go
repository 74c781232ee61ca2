// Package usersync is the Go producer library for sync workers: it publishes
// their presence input to <prefix>.usersync, the topic the presence stage
// reads (docs/architecture.md, "Presence").
//
// A sync worker makes one Publisher with its instance id, runs Publisher.Run
// under its supervisor, and brackets every sync request with StartSyncing and
// StopSyncing. Syncs are counted per user, as Synapse's WorkerPresenceHandler
// does: a user_sync record is written only when a user's first concurrent
// sync on the instance starts and when their last one ends. Every method
// returns once the broker has acknowledged the record (RequireAll), or the
// error.
//
// Run keeps the instance alive for the presence stage (instance_alive every
// AliveInterval; an instance silent for presence.instance_timeout counts as
// vanished), and clears the instance both when it starts (the syncs a crashed
// predecessor with the same id left behind end at once) and when its context
// ends (a clean shutdown takes the instance's users offline now, not after a
// timeout). Instance ids must therefore be unique among live workers.
package usersync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	fedpresence "github.com/fedpipe/fedpipe/federation/presence"
	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/schema"
)

// Defaults of Config.
const (
	DefaultTopicPrefix      = schema.DefaultPrefix
	DefaultAliveInterval    = time.Minute
	DefaultClearTimeout     = 10 * time.Second
	DefaultMaxAliveFailures = 3
	DefaultActiveInterval   = 10 * time.Second
)

// ErrClosed is returned by every method once Run has cleared the instance on
// shutdown, or Close was called: a record written then would make the
// presence stage think the instance alive again.
var ErrClosed = errors.New("usersync: publisher closed")

// ErrNotSyncing is returned by StopSyncing for a user with no sync under way
// on the instance: StopSyncing without StartSyncing, twice for one sync, or
// after Clear, which forgets every sync.
var ErrNotSyncing = errors.New("usersync: user is not syncing on this instance")

// Writer writes records to <prefix>.usersync; *kafka.Writer implements it. It
// must be bound to that topic (messages carry no topic) and write
// synchronously with RequiredAcks RequireAll, as kafkaio.NewWriter's do.
type Writer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// Config configures a Publisher.
type Config struct {
	// Instance is the sync worker's id, unique among live workers and stable
	// across its restarts. Required.
	Instance string
	// Brokers are the Kafka bootstrap addresses of the default writer.
	// Required unless Writer is set.
	Brokers []string
	// TopicPrefix names the topic of the default writer, <TopicPrefix>.usersync.
	// Default DefaultTopicPrefix.
	TopicPrefix string
	// Writer, when set, is used instead of a writer of New's making (and is
	// not closed by Close), so one can be shared.
	Writer Writer
	// ServerName, when set, makes input about users of other servers an
	// error before anything is written.
	ServerName string
	// AliveInterval is how often Run writes instance_alive; keep it well
	// below the presence stage's instance_timeout (5 min by default).
	// Default DefaultAliveInterval.
	AliveInterval time.Duration
	// ClearTimeout bounds the instance_clear Run writes when its context
	// ends. Default DefaultClearTimeout.
	ClearTimeout time.Duration
	// ActiveInterval is the least time between two user_active records of a
	// user: UserActive calls in between return at once without writing. The
	// presence stage counts a user as currently active for 60 s after the
	// last record and idle after 5 min, so anything well below 60 s loses
	// nothing a remote server sees. A worker may call UserActive on every
	// request. Negative: write every call. Default DefaultActiveInterval.
	ActiveInterval time.Duration
	// MaxAliveFailures is how many alive rounds in a row may fail (each is
	// logged) before Run gives up and returns the error. The writer has
	// already retried within each round. Default DefaultMaxAliveFailures.
	MaxAliveFailures int
}

// Validate fills the defaults of zero fields and reports every invalid
// field, each by name.
func (c *Config) Validate() error {
	if c.TopicPrefix == "" {
		c.TopicPrefix = DefaultTopicPrefix
	}
	if c.AliveInterval == 0 {
		c.AliveInterval = DefaultAliveInterval
	}
	if c.ClearTimeout == 0 {
		c.ClearTimeout = DefaultClearTimeout
	}
	if c.MaxAliveFailures == 0 {
		c.MaxAliveFailures = DefaultMaxAliveFailures
	}
	if c.ActiveInterval == 0 {
		c.ActiveInterval = DefaultActiveInterval
	}
	var errs []error
	if c.Instance == "" {
		errs = append(errs, errors.New("usersync: Instance is required"))
	} else if err := schema.CheckIdentifier("Instance", c.Instance); err != nil {
		errs = append(errs, fmt.Errorf("usersync: %w", err))
	}
	if c.Writer == nil && len(c.Brokers) == 0 {
		errs = append(errs, errors.New("usersync: Brokers (or a Writer) are required"))
	}
	if c.AliveInterval < 0 {
		errs = append(errs, fmt.Errorf("usersync: AliveInterval must be positive, got %s", c.AliveInterval))
	}
	if c.ClearTimeout < 0 {
		errs = append(errs, fmt.Errorf("usersync: ClearTimeout must be positive, got %s", c.ClearTimeout))
	}
	if c.MaxAliveFailures < 0 {
		errs = append(errs, fmt.Errorf("usersync: MaxAliveFailures must be positive, got %d", c.MaxAliveFailures))
	}
	return errors.Join(errs...)
}

// user is a user's syncs on the instance.
type user struct {
	// mu is held across the write of the user's transition, so their records
	// keep the order of the calls and a second sync returns only once the
	// first one's record is acknowledged.
	mu    sync.Mutex
	syncs int
	// dirty: the last write of the user's sync state failed, so the presence
	// stage may disagree with syncs; Run writes it again.
	dirty bool
	// holders counts the calls holding or waiting for mu; the entry is
	// dropped when none does and the user neither syncs nor is dirty.
	holders int
}

// Publisher publishes one sync worker's presence input. It is safe for
// concurrent use.
type Publisher struct {
	cfg    Config
	w      Writer
	owned  *kafka.Writer // the writer New made, closed by Close
	log    *slog.Logger
	m      *metrics
	topic  string
	closer sync.Once

	// gate orders the instance-wide records (instance_clear) after every
	// user record under way: user calls hold it for reading.
	gate   sync.RWMutex
	closed bool // under gate

	mu    sync.Mutex // guards users and active
	users map[string]*user
	// active: when each user's last user_active record was acknowledged,
	// for those within ActiveInterval (pruned by Run's rounds).
	active map[string]time.Time
}

// New returns a Publisher. reg may be nil (no metrics).
func New(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		return nil, errors.New("usersync: logger is required")
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	p := &Publisher{cfg: cfg, w: cfg.Writer, log: logger, m: m, topic: schema.Topic(cfg.TopicPrefix, "usersync"), users: map[string]*user{}, active: map[string]time.Time{}}
	if p.w == nil {
		p.owned = kafkaio.NewWriter(cfg.Brokers, p.topic)
		p.w = p.owned
	}
	return p, nil
}

// StartSyncing records that a sync request of userID started. The first
// concurrent sync of the user writes user_sync{syncing:true}; later ones only
// count (after waiting for the first one's acknowledgement). On error the
// sync is not counted: do not call StopSyncing for it.
func (p *Publisher) StartSyncing(ctx context.Context, userID string) error {
	return p.withUser(ctx, userID, func(u *user) error {
		if u.syncs == 0 || u.dirty {
			if err := p.writeSync(ctx, u, userID, true); err != nil {
				return err
			}
		}
		u.syncs++
		if u.syncs == 1 {
			p.m.syncing.Inc()
		}
		return nil
	})
}

// StopSyncing records that a sync request of userID ended. The last
// concurrent sync writes user_sync{syncing:false}. The sync ends even when
// the write fails (the error is returned): Run writes the user's state again
// at its next round.
func (p *Publisher) StopSyncing(ctx context.Context, userID string) error {
	return p.withUser(ctx, userID, func(u *user) error {
		if u.syncs == 0 {
			return fmt.Errorf("stopping a sync of %s on %s: %w", userID, p.cfg.Instance, ErrNotSyncing)
		}
		u.syncs--
		if u.syncs > 0 {
			return nil
		}
		p.m.syncing.Dec()
		return p.writeSync(ctx, u, userID, false)
	})
}

// UserActive records that userID did something (sent an event, or synced
// asking to be online): an idle user is online again. At most one record per
// user is written per ActiveInterval; the calls in between return nil at
// once (counted in fedpipe_usersync_active_skipped_total).
func (p *Publisher) UserActive(ctx context.Context, userID string) error {
	return p.withUser(ctx, userID, func(*user) error {
		p.mu.Lock()
		last, ok := p.active[userID]
		p.mu.Unlock()
		if ok && p.cfg.ActiveInterval > 0 && time.Since(last) < p.cfg.ActiveInterval {
			p.m.activeSkipped.Inc()
			return nil
		}
		if err := p.write(ctx, schema.UserSyncRecord{Kind: schema.KindUserActive, UserID: userID}); err != nil {
			return err
		}
		if p.cfg.ActiveInterval > 0 {
			p.mu.Lock()
			p.active[userID] = time.Now()
			p.mu.Unlock()
		}
		return nil
	})
}

// SetPresence records that userID set their presence (online, unavailable
// or offline) and status message; a nil statusMsg clears it.
func (p *Publisher) SetPresence(ctx context.Context, userID, presence string, statusMsg *string) error {
	if !fedpresence.Valid(presence) {
		return fmt.Errorf("setting the presence of %s: presence %q is not online, unavailable or offline", userID, presence)
	}
	return p.withUser(ctx, userID, func(*user) error {
		if err := p.write(ctx, schema.UserSyncRecord{Kind: schema.KindSetPresence, UserID: userID, Presence: presence, StatusMsg: statusMsg}); err != nil {
			return err
		}
		// The user's next activity may change what they set: tell it.
		p.mu.Lock()
		delete(p.active, userID)
		p.mu.Unlock()
		return nil
	})
}

// Clear writes instance_clear, which ends every sync of the instance at once,
// and forgets the counted syncs (their StopSyncing then returns
// ErrNotSyncing). On error nothing is forgotten and Clear can be retried.
func (p *Publisher) Clear(ctx context.Context) error {
	p.gate.Lock()
	defer p.gate.Unlock()
	if p.closed {
		return ErrClosed
	}
	if err := p.write(ctx, schema.UserSyncRecord{Kind: schema.KindInstanceClear}); err != nil {
		return err
	}
	p.forget()
	return nil
}

// Close stops the Publisher without clearing the instance (Run does that)
// and closes the writer New made. It is idempotent.
func (p *Publisher) Close() error {
	p.gate.Lock()
	p.closed = true
	p.gate.Unlock()
	var err error
	p.closer.Do(func() {
		if p.owned != nil {
			if err = p.owned.Close(); err != nil {
				err = fmt.Errorf("closing the %s writer: %w", p.topic, err)
			}
		}
	})
	return err
}

// withUser runs f with the user's entry locked, after checking the id.
func (p *Publisher) withUser(ctx context.Context, userID string, f func(*user) error) error {
	if err := CheckUserID(userID, p.cfg.ServerName); err != nil {
		return fmt.Errorf("presence input of instance %s: %w", p.cfg.Instance, err)
	}
	p.gate.RLock()
	defer p.gate.RUnlock()
	if p.closed {
		return ErrClosed
	}
	p.mu.Lock()
	u, ok := p.users[userID]
	if !ok {
		u = &user{}
		p.users[userID] = u
	}
	u.holders++
	p.mu.Unlock()
	u.mu.Lock()
	err := f(u)
	u.mu.Unlock()
	p.mu.Lock()
	u.holders--
	p.drop(userID, u)
	p.mu.Unlock()
	return err
}

// drop removes an entry nobody needs; p.mu is held.
func (p *Publisher) drop(userID string, u *user) {
	if u.holders == 0 && u.syncs == 0 && !u.dirty {
		delete(p.users, userID)
	}
}

// forget drops every count; the gate is held for writing, so no call holds
// an entry.
func (p *Publisher) forget() {
	p.mu.Lock()
	p.users = map[string]*user{}
	p.active = map[string]time.Time{}
	p.mu.Unlock()
	p.m.syncing.Set(0)
}

// writeSync writes the user's sync state and keeps track of whether the
// presence stage has it; u.mu is held.
func (p *Publisher) writeSync(ctx context.Context, u *user, userID string, syncing bool) error {
	err := p.write(ctx, schema.UserSyncRecord{Kind: schema.KindUserSync, UserID: userID, Syncing: &syncing})
	u.dirty = err != nil
	return err
}

// write stamps recs with the instance and the time and writes them in one
// call, returning once the broker acknowledged them.
func (p *Publisher) write(ctx context.Context, recs ...schema.UserSyncRecord) error {
	now := time.Now().UnixMilli()
	msgs := make([]kafka.Message, len(recs))
	for i, r := range recs {
		r.Instance, r.TS = p.cfg.Instance, now
		var err error
		if msgs[i], err = Message(r); err != nil {
			return err
		}
	}
	start := time.Now()
	err := p.w.WriteMessages(ctx, msgs...)
	p.m.duration.Observe(time.Since(start).Seconds())
	if err != nil {
		p.m.failures.WithLabelValues(recs[0].Kind).Inc()
		if recs[0].UserID != "" {
			return fmt.Errorf("writing %s of %s from %s to %s: %w", recs[0].Kind, recs[0].UserID, p.cfg.Instance, p.topic, err)
		}
		return fmt.Errorf("writing %s of %s to %s: %w", recs[0].Kind, p.cfg.Instance, p.topic, err)
	}
	for _, r := range recs {
		p.m.records.WithLabelValues(r.Kind).Inc()
	}
	return nil
}
