package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// EnvPrefix starts every environment variable that overrides a key:
// kafka.brokers is FEDPIPE_KAFKA_BROKERS.
const EnvPrefix = "FEDPIPE_"

// Load builds the configuration: defaults, then the YAML file at path (if path is
// not empty), then FEDPIPE_* variables from environ, then the flags set on fs
// (registered with RegisterFlags). Unknown keys and invalid values are errors
// naming the key. An instance left empty becomes the host name (HostInstance).
// The result is validated.
func Load(path string, environ []string, fs *flag.FlagSet) (Config, error) {
	cfg := Default()
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("reading config file: %w", err)
		}
		if err := decodeYAML(data, &cfg); err != nil {
			return cfg, fmt.Errorf("config file %s: %w", path, err)
		}
	}
	if err := applyEnv(environ, &cfg); err != nil {
		return cfg, err
	}
	if fs != nil {
		byName := map[string]key{}
		for _, k := range keys() {
			byName[k.name] = k
		}
		var errs []error
		fs.Visit(func(f *flag.Flag) {
			k, ok := byName[f.Name]
			if !ok {
				return
			}
			if err := setString(&cfg, k, f.Value.String()); err != nil {
				errs = append(errs, fmt.Errorf("flag --%s: %w", f.Name, err))
			}
		})
		if err := errors.Join(errs...); err != nil {
			return cfg, err
		}
	}
	if cfg.Instance == "" {
		cfg.Instance = HostInstance()
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("invalid configuration:\n%w", err)
	}
	return cfg, nil
}

// key is one leaf of the configuration: its dotted name and its field index path.
type key struct {
	name  string
	index []int
	doc   string
}

// keys lists every leaf key of Config in declaration order.
func keys() []key {
	var out []key
	var walk func(t reflect.Type, prefix string, index []int)
	walk = func(t reflect.Type, prefix string, index []int) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if name == "" || name == "-" {
				continue
			}
			idx := append(append([]int(nil), index...), i)
			if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Duration(0)) {
				walk(f.Type, prefix+name+".", idx)
				continue
			}
			out = append(out, key{name: prefix + name, index: idx, doc: f.Tag.Get("doc")})
		}
	}
	walk(reflect.TypeOf(Config{}), "", nil)
	return out
}

// Keys returns the dotted names of every configuration key, for documentation.
func Keys() []string {
	var out []string
	for _, k := range keys() {
		out = append(out, k.name)
	}
	return out
}

// EnvName is the environment variable overriding the dotted key.
func EnvName(dotted string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(dotted, ".", "_"))
}

// RegisterFlags adds a --<dotted.key> flag to fs for each configuration key
// that scope names, or for every key when scope is empty. A scope entry names a
// key or a whole section: "kafka" is every kafka.* key, "kafka.brokers" one
// key. The flags check their value as the key's type when parsed; Load applies
// those set, after the file and the environment. An entry naming no key panics:
// it is a mistake in the caller, not in the configuration.
func RegisterFlags(fs *flag.FlagSet, scope ...string) {
	def := reflect.ValueOf(Default())
	for _, s := range scope {
		if !slices.ContainsFunc(keys(), func(k key) bool { return inScope(k.name, s) }) {
			panic(fmt.Sprintf("config.RegisterFlags: %q names no configuration key", s))
		}
	}
	for _, k := range keys() {
		if fs.Lookup(k.name) != nil || len(scope) > 0 && !slices.ContainsFunc(scope, func(s string) bool { return inScope(k.name, s) }) {
			continue
		}
		v := &flagValue{k: k, typ: typeName(def.FieldByIndex(k.index).Type())}
		if d := def.FieldByIndex(k.index); !d.IsZero() {
			v.text = textValue(d)
		}
		fs.Var(v, k.name, k.doc+" (env "+EnvName(k.name)+")")
	}
}

func inScope(name, scope string) bool { return name == scope || strings.HasPrefix(name, scope+".") }

// flagValue is a configuration key's flag. It holds the text as given and
// checks it as the key's type when set.
type flagValue struct {
	k    key
	typ  string
	text string
}

func (v *flagValue) String() string {
	if v == nil {
		return ""
	}
	return v.text
}

func (v *flagValue) Set(s string) error {
	cfg := Default()
	if err := setString(&cfg, v.k, s); err != nil {
		return err
	}
	v.text = s
	return nil
}

// Type names the value's type for --help: string, int, bool, duration, list
// (comma-separated) or map (name=value,...).
func (v *flagValue) Type() string { return v.typ }

// IsBoolFlag lets a bool key be set by its name alone (--federation.insecure_skip_verify).
func (v *flagValue) IsBoolFlag() bool { return v.typ == "bool" }

func typeName(t reflect.Type) string {
	switch {
	case t == reflect.TypeOf(time.Duration(0)):
		return "duration"
	case t.Kind() == reflect.Int || t.Kind() == reflect.Int64:
		return "int"
	case t.Kind() == reflect.Slice:
		return "list"
	case t.Kind() == reflect.Map:
		return "map"
	default:
		return t.Kind().String()
	}
}

// textValue spells a value the way flags and the environment do.
func textValue(v reflect.Value) string {
	switch {
	case v.Type() == reflect.TypeOf(time.Duration(0)):
		return time.Duration(v.Int()).String()
	case v.Kind() == reflect.Slice:
		var items []string
		for i := range v.Len() {
			items = append(items, v.Index(i).String())
		}
		return strings.Join(items, ",")
	case v.Kind() == reflect.Map:
		var items []string
		for _, k := range v.MapKeys() {
			items = append(items, k.String()+"="+v.MapIndex(k).String())
		}
		sort.Strings(items)
		return strings.Join(items, ",")
	default:
		return fmt.Sprint(v.Interface())
	}
}

func applyEnv(environ []string, cfg *Config) error {
	byEnv := map[string]key{}
	for _, k := range keys() {
		byEnv[EnvName(k.name)] = k
	}
	var errs []error
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		if name == EnvPrefix+"CONFIG" || strings.HasPrefix(name, EnvPrefix+"TEST_") {
			continue // read by cmd/ and by tests, not configuration keys
		}
		k, ok := byEnv[name]
		if !ok {
			errs = append(errs, fmt.Errorf("environment %s: no such configuration key", name))
			continue
		}
		if err := setString(cfg, k, value); err != nil {
			errs = append(errs, fmt.Errorf("environment %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// setString parses s into the key's field, the way env and flags spell values.
func setString(cfg *Config, k key, s string) error {
	v := reflect.ValueOf(cfg).Elem().FieldByIndex(k.index)
	bad := func(want string) error { return fmt.Errorf("%s: %q is not %s", k.name, s, want) }
	switch {
	case v.Type() == reflect.TypeOf(time.Duration(0)):
		d, err := time.ParseDuration(s)
		if err != nil {
			return bad("a duration (like 50ms, 10m, 168h)")
		}
		v.SetInt(int64(d))
	case v.Kind() == reflect.String:
		v.SetString(s)
	case v.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return bad("true or false")
		}
		v.SetBool(b)
	case v.Kind() == reflect.Int || v.Kind() == reflect.Int64:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return bad("an integer")
		}
		v.SetInt(n)
	case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.String:
		var items []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				items = append(items, p)
			}
		}
		v.Set(reflect.ValueOf(items))
	case v.Kind() == reflect.Map:
		m := map[string]string{}
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p == "" {
				continue
			}
			name, val, ok := strings.Cut(p, "=")
			if !ok {
				return bad("a list of name=value pairs")
			}
			m[strings.TrimSpace(name)] = strings.TrimSpace(val)
		}
		v.Set(reflect.ValueOf(m))
	default:
		return fmt.Errorf("%s: cannot be set from text", k.name)
	}
	return nil
}

// decodeYAML decodes data onto cfg key by key, so that unknown keys and values of
// the wrong type are reported by their dotted name and line.
func decodeYAML(data []byte, cfg *Config) error {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return err
	}
	if len(root.Content) == 0 {
		return nil // an empty file keeps the defaults
	}
	if root.Content[0].Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: the file must be a mapping of keys", root.Content[0].Line)
	}
	return decodeNode(root.Content[0], reflect.ValueOf(cfg).Elem(), "")
}

func decodeNode(n *yaml.Node, v reflect.Value, prefix string) error {
	t := v.Type()
	fields := map[string]int{}
	for i := 0; i < t.NumField(); i++ {
		fields[strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]] = i
	}
	var errs []error
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		idx, ok := fields[k.Value]
		if !ok {
			errs = append(errs, fmt.Errorf("line %d: unknown key %s%s (known here: %s)", k.Line, prefix, k.Value, known(fields)))
			continue
		}
		fv := v.Field(idx)
		name := prefix + k.Value
		if fv.Kind() == reflect.Struct && fv.Type() != reflect.TypeOf(time.Duration(0)) {
			if val.Kind != yaml.MappingNode {
				errs = append(errs, fmt.Errorf("line %d: %s must be a mapping of keys", val.Line, name))
				continue
			}
			if err := decodeNode(val, fv, name+"."); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if err := val.Decode(fv.Addr().Interface()); err != nil {
			errs = append(errs, fmt.Errorf("line %d: %s: %q is not a valid %s", val.Line, name, val.Value, describe(fv.Type())))
		}
	}
	return errors.Join(errs...)
}

func describe(t reflect.Type) string {
	switch {
	case t == reflect.TypeOf(time.Duration(0)):
		return "duration (like 50ms, 10m, 168h)"
	case t.Kind() == reflect.Slice:
		return "list"
	case t.Kind() == reflect.Map:
		return "mapping"
	default:
		return t.Kind().String()
	}
}

func known(fields map[string]int) string {
	var names []string
	for n := range fields {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}
