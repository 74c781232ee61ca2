package main

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/admin"
	"github.com/fedpipe/fedpipe/consumers/presence"
	"github.com/fedpipe/fedpipe/consumers/router"
	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/consumers/sender"
	"github.com/fedpipe/fedpipe/federation/client"
	"github.com/fedpipe/fedpipe/federation/discovery"
	fedpresence "github.com/fedpipe/fedpipe/federation/presence"
	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/internal/config"
	"github.com/fedpipe/fedpipe/internal/httpmux"
	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/producers/ingest"
	"github.com/fedpipe/fedpipe/producers/relay"
	"github.com/fedpipe/fedpipe/schema"
)

// Consumer groups of the stages. A group's id is <topic prefix>-<stage>
// (fedpipe-router with the default prefix), so two deployments that share a
// Kafka cluster under different prefixes never join each other's groups.
const (
	presenceGroup = "presence"
	routerGroup   = "router"
	senderGroup   = "sender"
)

// groupID is the id of a stage's consumer group under the topic prefix.
func groupID(prefix, stage string) string { return prefix + "-" + stage }

var allStages = []string{"relay", "presence", "router", "sender", "ingest", "keys"}

// cmdRun returns the command `name` running the given stages, with flags for
// the configuration keys in scope (every key when empty); `run` also takes
// --stages to pick a subset.
func cmdRun(name, summary string, scope []string, defaults ...string) func(context.Context, []string, io.Writer, io.Writer) error {
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		fs := newFlagSet(name, "", strings.ToUpper(summary[:1])+summary[1:]+".", stderr)
		path := configFlags(fs, scope...)
		stages := new(string)
		if name == "run" {
			stages = fs.String("stages", "", "comma-separated `list` of stages to run (relay,presence,router,sender,ingest,keys); default: all")
		}
		cfg, err := loadConfig(fs, path, args)
		if err != nil {
			return err
		}
		run := defaults
		if *stages != "" {
			run = splitList(*stages)
			for _, s := range run {
				if !slices.Contains(allStages, s) {
					return fmt.Errorf("--stages: unknown stage %q (relay, presence, router, sender, ingest, keys)", s)
				}
			}
		}
		log := newLogger(cfg.LogLevel, stderr)
		in, err := startInfra(ctx, cfg, log, slices.Contains(run, "sender") || slices.Contains(run, "keys") && cfg.Federation.Listen != "")
		if err != nil {
			return err
		}
		defer in.Close()
		g, gctx := errgroup.WithContext(ctx)
		if err := in.startStages(gctx, g, run, nil); err != nil {
			return err
		}
		log.Info("fedpipe running", "stages", run, "instance", cfg.Instance, "server_name", cfg.ServerName)
		if name == "run" {
			printWhereToLook(stdout, in.listeners)
		}
		err = g.Wait()
		if ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled)) {
			log.Info("fedpipe stopped")
			return nil
		}
		return err
	}
}

// printWhereToLook tells someone who just started fedpipe run where to look.
func printWhereToLook(w io.Writer, listeners map[string]string) {
	fmt.Fprintln(w, "fedpipe is running.")
	if a := listeners["admin"]; a != "" {
		fmt.Fprintf(w, "  status page  http://%s/  (or: fedpipe status --url http://%s); metrics on /metrics\n", a, a)
	}
	if a := listeners["ingest"]; a != "" {
		fmt.Fprintf(w, "  ingest API   http://%s%s  (docs/openapi.yaml)\n", a, ingest.Path)
	}
	fmt.Fprintln(w, "  to see it deliver to simulated remote servers: fedpipe demo")
}

// stageOptions lets the demo and tests adjust what the configuration cannot say.
type stageOptions struct {
	// clientConfig adjusts the federation client (the demo trusts its receiver's CA).
	clientConfig func(*client.Config)
	// presenceNow replaces the presence stage's clock (tests of its timers).
	presenceNow func() time.Time
	// senderQueue adjusts the sender's queue configuration (tests: its
	// clock, its pause between retries).
	senderQueue func(*queue.Config)
}

// startStages starts each named stage and the admin listener in g.
func (in *infra) startStages(ctx context.Context, g *errgroup.Group, stages []string, opts *stageOptions) error {
	if opts == nil {
		opts = &stageOptions{}
	}
	start := map[string]func(context.Context, *errgroup.Group, *stageOptions) error{
		"relay": in.startRelay, "presence": in.startPresence, "router": in.startRouter,
		"sender": in.startSender, "ingest": in.startIngest,
		"keys": func(ctx context.Context, g *errgroup.Group, _ *stageOptions) error { return in.serveKeys(ctx, g) },
	}
	for _, s := range stages {
		f, ok := start[s]
		if !ok {
			return fmt.Errorf("unknown stage %q", s)
		}
		if err := f(ctx, g, opts); err != nil {
			return err
		}
	}
	return in.startAdmin(ctx, g, stages)
}

// routerTopics are the streams the router group reads.
var routerTopics = []string{"room", "presence", "todevice", "typing", "devicelists", "receipts"}

// groupConfig is the consumer-group configuration of stage id over topics.
func (in *infra) groupConfig(id string, topics ...string) runtime.Config {
	cfg := in.cfg
	return runtime.Config{Brokers: in.brokers, GroupID: groupID(cfg.Kafka.TopicPrefix, id), Topics: topics,
		DeadLetterTopic: schema.Topic(cfg.Kafka.TopicPrefix, "deadletter"), Instance: cfg.Instance,
		StallAfter: cfg.Kafka.StallAfter, RebalanceTimeout: cfg.Kafka.RebalanceTimeout, DrainTimeout: cfg.Kafka.DrainTimeout}
}

// startRelay runs the relay: the stream tables to their topics.
func (in *infra) startRelay(ctx context.Context, g *errgroup.Group, _ *stageOptions) error {
	cfg := in.cfg
	prefix := cfg.Kafka.TopicPrefix
	deadLetters := schema.Topic(prefix, "deadletter")
	rl, err := relay.New(relay.Config{Instance: cfg.Instance, PollInterval: cfg.Relay.PollInterval, BatchSize: cfg.Relay.BatchSize},
		in.pool, kafkaio.NewPartitionWriter(in.brokers, schema.Topic(prefix, "room")), kafkaio.NewPartitionWriter(in.brokers, schema.Topic(prefix, "state")), in.log.With("stage", "relay"), in.reg,
		relay.WithPresence(kafkaio.NewPartitionWriter(in.brokers, schema.Topic(prefix, "presence"))),
		relay.WithToDevice(kafkaio.NewPartitionWriter(in.brokers, schema.Topic(prefix, "todevice"))),
		relay.WithDeviceLists(kafkaio.NewPartitionWriter(in.brokers, schema.Topic(prefix, "devicelists"))),
		relay.WithReceipts(kafkaio.NewPartitionWriter(in.brokers, schema.Topic(prefix, "receipts"))),
		relay.WithDeadLetters(kafkaio.NewWriter(in.brokers, deadLetters)))
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	g.Go(func() error { return rl.Run(ctx) })
	return nil
}

// startPresence runs a member of the presence group.
func (in *infra) startPresence(ctx context.Context, g *errgroup.Group, opts *stageOptions) error {
	cfg := in.cfg
	prefix := cfg.Kafka.TopicPrefix
	log := in.log.With("stage", "presence")
	pc := cfg.Presence
	st, err := presence.New(presence.Config{ServerName: cfg.ServerName, Prefix: prefix, InstanceTimeout: pc.InstanceTimeout, SweepInterval: pc.SweepInterval, Now: opts.presenceNow,
		Timers: fedpresence.Timers{SyncTimeout: pc.SyncTimeout, Idle: pc.IdleTimeout, Granularity: fedpresence.DefaultTimers.Granularity, Ping: pc.PingInterval}},
		in.pool, log, in.reg)
	if err != nil {
		return err
	}
	grp, err := runtime.New(in.groupConfig(presenceGroup, schema.Topic(prefix, "usersync")), st, log, in.reg)
	if err != nil {
		return fmt.Errorf("presence group: %w", err)
	}
	g.Go(func() error { return st.Run(ctx) })
	g.Go(func() error { return grp.Run(ctx) })
	return nil
}

// startRouter runs a member of the router group, its writer and its history pruner.
func (in *infra) startRouter(ctx context.Context, g *errgroup.Group, _ *stageOptions) error {
	cfg := in.cfg
	prefix := cfg.Kafka.TopicPrefix
	deadLetters := schema.Topic(prefix, "deadletter")
	log := in.log.With("stage", "router")
	// A partition writer, not a *kafka.Writer: no second linger after the
	// batch writer's own, and no batch capacity allocated per partition.
	out := runtime.NewBatchWriter(kafkaio.NewPartitionWriter(in.brokers, schema.Topic(prefix, "outbound")), 2000, 2*time.Millisecond, log, in.reg,
		runtime.WithDeadLetters(kafkaio.NewWriter(in.brokers, deadLetters), schema.Topic(prefix, "outbound"), "router", cfg.Instance))
	parts, err := outboundPartitions(ctx, in.brokers, schema.Topic(prefix, "outbound"), cfg.Kafka.OutboundPartitions, log)
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	rt, err := router.New(router.Config{ServerName: cfg.ServerName, Prefix: prefix, Instance: cfg.Instance, OutboundPartitions: parts,
		RoomsPerPartition: cfg.Router.RoomsPerPartition, Brokers: in.brokers, GroupID: groupID(prefix, routerGroup)}, in.pool, out, log, in.reg)
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	var topics []string
	for _, t := range routerTopics {
		topics = append(topics, schema.Topic(prefix, t))
	}
	grp, err := runtime.New(in.groupConfig(routerGroup, topics...), rt, log, in.reg)
	if err != nil {
		return fmt.Errorf("router group: %w", err)
	}
	pruner, err := router.NewHistoryPruner(router.HistoryConfig{Keep: cfg.Router.MembershipHistory, Interval: cfg.Router.PruneInterval},
		in.pool, in.brokers, schema.Topic(prefix, "room"), log, in.reg)
	if err != nil {
		return err
	}
	g.Go(func() error { return out.Run(ctx) })
	g.Go(func() error { return grp.Run(ctx) })
	g.Go(func() error { return pruner.Run(ctx) })
	return nil
}

// startSender runs a member of the sender group and its control listener.
func (in *infra) startSender(ctx context.Context, g *errgroup.Group, opts *stageOptions) error {
	cfg := in.cfg
	prefix := cfg.Kafka.TopicPrefix
	log := in.log.With("stage", "sender")
	ccfg := client.Config{Origin: cfg.ServerName, CAFile: cfg.Federation.CAFile, InsecureSkipVerify: cfg.Federation.InsecureSkipVerify,
		AllowedNetworks: cfg.Federation.AllowedNetworks, RequestTimeout: cfg.Federation.RequestTimeout}
	if opts.clientConfig != nil {
		opts.clientConfig(&ccfg)
	}
	// .well-known requests dial like federation requests: internal
	// addresses refused at dial time, redirects included.
	wk, err := client.NewDiscoveryHTTPClient(ccfg)
	if err != nil {
		return fmt.Errorf("federation client: %w", err)
	}
	res, err := discovery.New(discovery.Config{Static: cfg.Federation.Static}, discovery.WithHTTPClient(wk))
	if err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	cl, err := client.New(ccfg, in.key, res, log)
	if err != nil {
		return fmt.Errorf("federation client: %w", err)
	}
	parts, err := outboundPartitions(ctx, in.brokers, schema.Topic(prefix, "outbound"), cfg.Kafka.OutboundPartitions, log)
	if err != nil {
		return fmt.Errorf("sender: %w", err)
	}
	qcfg := queue.Config{Origin: cfg.ServerName, BackoffInitial: cfg.Federation.BackoffInitial, BackoffMax: cfg.Federation.BackoffMax,
		MaxTransactionBytes: cfg.Federation.MaxTransactionBytes, Linger: cfg.Federation.Linger}
	if qcfg.Linger == 0 {
		qcfg.Linger = -1 // the key's 0 is "send at once", the queue's zero its default
	}
	if opts.senderQueue != nil {
		opts.senderQueue(&qcfg)
	}
	snd, err := sender.New(sender.Config{OutboundPartitions: parts, Queue: qcfg},
		in.pool, cl, log, in.reg)
	if err != nil {
		return fmt.Errorf("sender: %w", err)
	}
	grp, err := runtime.New(in.groupConfig(senderGroup, schema.Topic(prefix, "outbound")), snd, log, in.reg)
	if err != nil {
		return fmt.Errorf("sender group: %w", err)
	}
	ctl, err := sender.NewControlListener(in.pool, snd.Controller(), log, in.reg)
	if err != nil {
		return fmt.Errorf("sender control: %w", err)
	}
	g.Go(func() error { return snd.Run(ctx) })
	g.Go(func() error { return grp.Run(ctx) })
	g.Go(func() error { return ctl.Run(ctx) })
	return nil
}

// startIngest serves the ingest API (none when ingest.listen is empty).
func (in *infra) startIngest(ctx context.Context, g *errgroup.Group, _ *stageOptions) error {
	cfg := in.cfg
	prefix := cfg.Kafka.TopicPrefix
	if cfg.Ingest.Listen == "" {
		return nil
	}
	// Closed when the process ends, after the listener has stopped.
	usersync := kafkaio.NewWriter(in.brokers, schema.Topic(prefix, "usersync"))
	typing := kafkaio.NewWriter(in.brokers, schema.Topic(prefix, "typing"))
	in.closers = append(in.closers, func(context.Context) error { return errors.Join(usersync.Close(), typing.Close()) })
	h, err := ingest.NewHandler(ingest.Config{Token: cfg.Ingest.Token, MaxBodyBytes: cfg.Ingest.MaxBodyBytes, UserSync: usersync, Typing: typing, ServerName: cfg.ServerName},
		in.pool, in.log.With("stage", "ingest"), in.reg)
	if err != nil {
		return fmt.Errorf("ingest: %w", err)
	}
	return serveHTTP(ctx, g, "ingest", cfg.Ingest.Listen, h, in)
}

// startAdmin serves the admin API, the status page and /metrics on admin.listen.
func (in *infra) startAdmin(ctx context.Context, g *errgroup.Group, stages []string) error {
	cfg := in.cfg
	if cfg.Admin.Listen == "" {
		return nil
	}
	api, err := admin.New(adminConfig(cfg, in.brokers, stages), in.pool, in.log.With("stage", "admin"), in.reg)
	if err != nil {
		return err
	}
	in.closers = append(in.closers, func(context.Context) error { return api.Close() })
	g.Go(func() error { return api.Run(ctx) })
	mux := httpmux.New()
	mux.Handle("GET /metrics", requireBearer(cfg.Admin.Token, promhttp.HandlerFor(in.reg, promhttp.HandlerOpts{Registry: in.reg})))
	mux.Handle("/", api.Handler()) // checks admin.token itself, answering Synapse's error shapes
	return serveHTTP(ctx, g, "admin", cfg.Admin.Listen, mux, in)
}

// requireBearer answers 401 to requests without "Authorization: Bearer token"
// (admin.token); an empty token lets everything through (loopback only, see
// config.Validate).
func requireBearer(token string, h http.Handler) http.Handler {
	if token == "" {
		return h
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", "Bearer")
			http.Error(w, "Authorization: Bearer <admin.token> required", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// adminConfig is the admin API's view of the deployment: every stage's group,
// whichever this process runs.
func adminConfig(cfg config.Config, brokers, stages []string) admin.Config {
	prefix := cfg.Kafka.TopicPrefix
	t := func(stream string) string { return schema.Topic(prefix, stream) }
	var routerTopicNames []string
	for _, s := range routerTopics {
		routerTopicNames = append(routerTopicNames, t(s))
	}
	return admin.Config{Token: cfg.Admin.Token, Brokers: brokers, Stages: stages, Instance: cfg.Instance, ServerName: cfg.ServerName,
		Groups: []admin.Group{
			{ID: groupID(prefix, presenceGroup), Topics: []string{t("usersync")}},
			{ID: groupID(prefix, routerGroup), Topics: routerTopicNames},
			{ID: groupID(prefix, senderGroup), Topics: []string{t("outbound")}},
		},
		DeadLetterTopic: t("deadletter"),
		RedriveTopics:   []string{t("usersync"), t("room"), t("presence"), t("outbound"), t("todevice"), t("typing"), t("devicelists"), t("receipts")},
		RoomTopic:       t("room"), RouterGroup: groupID(prefix, routerGroup), StallAfter: cfg.Kafka.StallAfter}
}

// serveHTTP listens now (so a taken port fails the start) and serves in g until ctx ends.
func serveHTTP(ctx context.Context, g *errgroup.Group, name, addr string, h http.Handler, in *infra) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s listener: %w", name, err)
	}
	serveListener(ctx, g, name, ln, h, in)
	return nil
}

// serveListener serves h on ln in g until ctx ends.
func serveListener(ctx context.Context, g *errgroup.Group, name string, ln net.Listener, h http.Handler, in *infra) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	in.listeners[name] = ln.Addr().String()
	in.handlers[name] = h
	in.log.Info("listening", "listener", name, "addr", ln.Addr().String())
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("%s listener: %w", name, err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
}

// outboundPartitions is the outbound topic's partition count as the brokers
// have it. The router's writer spreads destinations over the topic's real
// partitions, so the router must count the same way to group an event's
// destinations by partition, and the sender to tell which destinations
// are its own (catch-up wakes only those); a count that differs from
// kafka.outbound_partitions, which only sizes the topic when it is created, is
// reported. Partitions added later are refused when assigned (sender.Open)
// until the member restarts and counts them.
func outboundPartitions(ctx context.Context, brokers []string, topic string, configured int, log *slog.Logger) (int, error) {
	n, err := kafkaio.Partitions(ctx, brokers, topic)
	if err != nil {
		return 0, err
	}
	if n != configured {
		log.Warn("the outbound topic's partition count differs from kafka.outbound_partitions; using the topic's", "topic", topic, "partitions", n, "configured", configured)
	}
	return n, nil
}
