package config

import (
	"bytes"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"
)

// Example renders the default configuration as a commented YAML file: every key,
// its default value and what it does. It is generated from Config itself, so the
// example cannot drift from the code.
func Example() []byte {
	var b bytes.Buffer
	b.WriteString("# fedpipe configuration. Every key can also be set with a FEDPIPE_* environment\n")
	b.WriteString("# variable (kafka.brokers -> FEDPIPE_KAFKA_BROKERS) or a flag (--kafka.brokers).\n")
	b.WriteString("# Precedence: flags, then environment, then this file, then the defaults shown.\n")
	writeExample(&b, reflect.ValueOf(Default()), 0)
	return b.Bytes()
}

func writeExample(b *bytes.Buffer, v reflect.Value, depth int) {
	t := v.Type()
	indent := strings.Repeat("  ", depth)
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if name == "" || name == "-" {
			continue
		}
		if doc := f.Tag.Get("doc"); doc != "" {
			if depth == 0 {
				b.WriteString("\n")
			}
			fmt.Fprintf(b, "%s# %s\n", indent, doc)
		}
		fv := v.Field(i)
		if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Duration(0)) {
			fmt.Fprintf(b, "%s%s:\n", indent, name)
			writeExample(b, fv, depth+1)
			continue
		}
		fmt.Fprintf(b, "%s%s: %s\n", indent, name, yamlValue(fv))
	}
}

func yamlValue(v reflect.Value) string {
	switch {
	case v.Type() == reflect.TypeOf(time.Duration(0)):
		return time.Duration(v.Int()).String()
	case v.Kind() == reflect.String:
		return fmt.Sprintf("%q", v.String())
	case v.Kind() == reflect.Slice:
		var items []string
		for i := 0; i < v.Len(); i++ {
			items = append(items, fmt.Sprintf("%q", v.Index(i).String()))
		}
		return "[" + strings.Join(items, ", ") + "]"
	case v.Kind() == reflect.Map:
		var items []string
		for _, k := range v.MapKeys() {
			items = append(items, fmt.Sprintf("%q: %q", k.String(), v.MapIndex(k).String()))
		}
		sort.Strings(items)
		return "{" + strings.Join(items, ", ") + "}"
	default:
		return fmt.Sprint(v.Interface())
	}
}
