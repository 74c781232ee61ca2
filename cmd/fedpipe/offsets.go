package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fedpipe/fedpipe/consumers/offsets"
	"github.com/fedpipe/fedpipe/internal/config"
)

// topicFlags collects repeated --topic values.
type topicFlags struct{ sel *offsets.Selection }

func (f topicFlags) String() string { return "" }
func (f topicFlags) Set(v string) error {
	return f.sel.AddTopic(v)
}

const offsetsSpecHelp = `SPEC is one of --to-earliest, --to-latest, --to-offset N, --shift-by ±N,
--to-datetime YYYY-MM-DDTHH:mm:SS.sss (local time unless a zone is given), --by-duration PnDTnHnMnS.
It prints the plan and changes nothing unless --execute is given, and refuses while the group
has members. With no kafka.brokers it talks to the embedded broker on 127.0.0.1:kafka.embedded_port.`

func cmdOffsets(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return subcommands(ctx, "offsets", map[string]command{
		"show": {"a consumer group's committed offsets, log ends, lag and owners",
			func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
				return runOffsets(ctx, "show", args, stdout, stderr)
			}},
		"reset": {"move a consumer group's offsets to replay or skip (a plan unless --execute)",
			func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
				return runOffsets(ctx, "reset", args, stdout, stderr)
			}},
	}, args, stdout, stderr)
}

func runOffsets(ctx context.Context, sub string, args []string, stdout, stderr io.Writer) error {
	usage := " --group G (--topic T[:P,P...] ... | --all-topics)"
	summary := "Show a consumer group's committed offsets, log ends, lag and owners, like kafka-consumer-groups.sh --describe."
	if sub == "reset" {
		usage += " SPEC [--execute]"
		summary = "Move a consumer group's offsets, with kafka-consumer-groups.sh's semantics.\n" + offsetsSpecHelp
	}
	fs := newFlagSet("offsets "+sub, usage, summary, stderr)
	path := configFlags(fs, "log_level", "kafka.brokers", "kafka.embedded_port")
	var sel offsets.Selection
	group := fs.String("group", "", "consumer group (fedpipe-router, fedpipe-sender, fedpipe-presence, ...)")
	fs.Var(topicFlags{&sel}, "topic", "a `topic`, or topic:partition,partition; repeatable")
	fs.BoolVar(&sel.AllTopics, "all-topics", false, "every topic the group has committed offsets for")
	var spec resetSpec
	if sub == "reset" {
		spec.register(fs)
	}
	cfg, err := loadConfig(fs, path, args)
	if err != nil {
		return err
	}
	if *group == "" {
		return errors.New("offsets: --group is required")
	}
	if sel.AllTopics == (len(sel.Topics) > 0) {
		return errors.New("offsets: give either --topic (repeatable) or --all-topics")
	}
	tool := offsets.New(offsetBrokers(cfg))
	if sub == "show" {
		rows, err := tool.Show(ctx, *group, sel)
		if err != nil {
			return err
		}
		printShow(stdout, *group, rows)
		return nil
	}
	target, err := spec.target()
	if err != nil {
		return err
	}
	plan, err := tool.Plan(ctx, *group, sel, target)
	if err != nil {
		return err
	}
	printPlan(stdout, *group, plan)
	if !spec.execute {
		fmt.Fprintln(stdout, "\nDry run: nothing changed. Run again with --execute to commit these offsets.")
		return nil
	}
	if err := tool.Execute(ctx, *group, plan); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nCommitted the new offsets of group %s.\n", *group)
	return nil
}

// offsetBrokers is kafka.brokers, or the embedded broker's address.
func offsetBrokers(cfg config.Config) []string {
	if len(cfg.Kafka.Brokers) > 0 {
		return cfg.Kafka.Brokers
	}
	return []string{"127.0.0.1:" + strconv.Itoa(cfg.Kafka.EmbeddedPort)}
}

// resetSpec holds the reset flags; exactly one specification must be given.
type resetSpec struct {
	earliest, latest, execute bool
	toOffset, shiftBy         string
	datetime, duration        string
}

func (s *resetSpec) register(fs *flag.FlagSet) {
	fs.BoolVar(&s.earliest, "to-earliest", false, "to the oldest record each partition holds")
	fs.BoolVar(&s.latest, "to-latest", false, "to the end of each partition (skip everything)")
	fs.StringVar(&s.toOffset, "to-offset", "", "to offset `N` (clamped to what each partition holds)")
	fs.StringVar(&s.shiftBy, "shift-by", "", "by `±N` from the committed offset (clamped)")
	fs.StringVar(&s.datetime, "to-datetime", "", "to the first record at or after `YYYY-MM-DDTHH:mm:SS.sss`")
	fs.StringVar(&s.duration, "by-duration", "", "to the first record at or after now minus `PnDTnHnMnS`")
	fs.BoolVar(&s.execute, "execute", false, "commit the new offsets (default: print the plan only)")
}

func (s *resetSpec) target() (offsets.Target, error) {
	var targets []offsets.Target
	var errs []error
	if s.earliest {
		targets = append(targets, offsets.Target{Mode: offsets.ModeEarliest})
	}
	if s.latest {
		targets = append(targets, offsets.Target{Mode: offsets.ModeLatest})
	}
	if s.toOffset != "" {
		n, err := strconv.ParseInt(s.toOffset, 10, 64)
		errs = append(errs, wrapFlag("--to-offset", err))
		targets = append(targets, offsets.Target{Mode: offsets.ModeOffset, Offset: n})
	}
	if s.shiftBy != "" {
		n, err := strconv.ParseInt(s.shiftBy, 10, 64)
		errs = append(errs, wrapFlag("--shift-by", err))
		targets = append(targets, offsets.Target{Mode: offsets.ModeShift, Offset: n})
	}
	if s.datetime != "" {
		ts, err := offsets.ParseDatetime(s.datetime, time.Local)
		errs = append(errs, err)
		targets = append(targets, offsets.Target{Mode: offsets.ModeDatetime, Time: ts})
	}
	if s.duration != "" {
		d, err := offsets.ParseISODuration(s.duration)
		errs = append(errs, err)
		targets = append(targets, offsets.Target{Mode: offsets.ModeDuration, Duration: d})
	}
	if err := errors.Join(errs...); err != nil {
		return offsets.Target{}, err
	}
	if len(targets) != 1 {
		return offsets.Target{}, errors.New("offsets reset: give exactly one of --to-earliest, --to-latest, --to-offset, --shift-by, --to-datetime, --by-duration")
	}
	return targets[0], nil
}

func wrapFlag(name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: not a whole number: %w", name, err)
}

func printShow(w io.Writer, group string, rows []offsets.Row) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUP\tTOPIC\tPARTITION\tCURRENT-OFFSET\tLOG-START-OFFSET\tLOG-END-OFFSET\tLAG\tCONSUMER-ID")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%d\t%d\t%s\n", group, r.Topic, r.Partition, offsetText(r.Current), r.Start, r.End, r.Lag(r.Current), dash(r.Owner))
	}
	tw.Flush()
}

func printPlan(w io.Writer, group string, rows []offsets.Row) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUP\tTOPIC\tPARTITION\tCURRENT-OFFSET\tNEW-OFFSET\tLAG-AFTER")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%d\n", group, r.Topic, r.Partition, offsetText(r.Current), r.New, r.Lag(r.New))
	}
	tw.Flush()
}

func offsetText(o int64) string {
	if o < 0 {
		return "-"
	}
	return strconv.FormatInt(o, 10)
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
