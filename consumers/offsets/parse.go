package offsets

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// AddTopic adds a --topic argument, `topic` or `topic:0,1,2`, to the selection.
func (s *Selection) AddTopic(arg string) error {
	topic, list, hasList := strings.Cut(arg, ":")
	if topic == "" {
		return fmt.Errorf("--topic %q: no topic name", arg)
	}
	if s.Topics == nil {
		s.Topics = map[string][]int{}
	}
	if !hasList {
		s.Topics[topic] = s.Topics[topic][:0:0]
		return nil
	}
	for _, f := range strings.Split(list, ",") {
		p, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || p < 0 {
			return fmt.Errorf("--topic %q: partition %q is not a non-negative number", arg, f)
		}
		s.Topics[topic] = append(s.Topics[topic], p)
	}
	return nil
}

// dateLayouts are the forms --to-datetime takes: kafka-consumer-groups.sh's
// 'YYYY-MM-DDTHH:mm:SS.sss', with or without milliseconds and a zone.
var dateLayouts = []string{
	"2006-01-02T15:04:05.000Z07:00",
	"2006-01-02T15:04:05Z07:00",
	"2006-01-02T15:04:05.000",
	"2006-01-02T15:04:05",
}

// ParseDatetime parses a --to-datetime value. Without a zone it is in loc
// (the machine's local zone, as kafka-consumer-groups.sh takes it).
func ParseDatetime(s string, loc *time.Location) (time.Time, error) {
	for _, layout := range dateLayouts {
		if t, err := time.ParseInLocation(layout, s, loc); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("--to-datetime %q: want YYYY-MM-DDTHH:mm:SS.sss, optionally with a zone (Z, +01:00)", s)
}

var isoDuration = regexp.MustCompile(`^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$`)

// ParseISODuration parses a --by-duration value in ISO 8601's PnDTnHnMnS form
// (P1DT2H, PT30M, PT1.5S), as kafka-consumer-groups.sh takes it.
func ParseISODuration(s string) (time.Duration, error) {
	m := isoDuration.FindStringSubmatch(s)
	if m == nil || s == "P" || strings.HasSuffix(s, "T") {
		return 0, fmt.Errorf("--by-duration %q: want ISO 8601 PnDTnHnMnS, e.g. P1DT2H or PT30M", s)
	}
	var d time.Duration
	units := []time.Duration{24 * time.Hour, time.Hour, time.Minute}
	for i, unit := range units {
		if m[i+1] == "" {
			continue
		}
		n, err := strconv.ParseInt(m[i+1], 10, 64)
		if err != nil || n > int64(1<<62)/int64(unit) {
			return 0, fmt.Errorf("--by-duration %q: too large", s)
		}
		d += time.Duration(n) * unit
	}
	if m[4] != "" {
		secs, err := strconv.ParseFloat(m[4], 64)
		if err != nil || secs > 1e9 {
			return 0, fmt.Errorf("--by-duration %q: too large", s)
		}
		d += time.Duration(secs * float64(time.Second))
	}
	return d, nil
}
