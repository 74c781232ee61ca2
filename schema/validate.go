package schema

import (
	"bytes"
	"embed"
	"fmt"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

//go:embed records/*.schema.json
var recordSchemas embed.FS

var (
	compileOnce sync.Once
	compiled    map[string]*jsonschema.Schema
	compileErr  error
)

// ValidateRecord checks a record value of the given stream ("room", "state",
// "presence", "usersync" or "outbound") against its JSON Schema in schema/records.
func ValidateRecord(stream string, value []byte) error {
	compileOnce.Do(func() {
		compiled = map[string]*jsonschema.Schema{}
		c := jsonschema.NewCompiler()
		for _, name := range []string{"room", "presence", "usersync", "receipts", "outbound", "typing", "devicelists"} {
			raw, err := recordSchemas.ReadFile("records/" + name + ".schema.json")
			if err != nil {
				compileErr = err
				return
			}
			doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
			if err != nil {
				compileErr = fmt.Errorf("%s schema: %w", name, err)
				return
			}
			url := "https://fedpipe.invalid/schema/" + name + ".schema.json"
			if err := c.AddResource(url, doc); err != nil {
				compileErr = err
				return
			}
			if compiled[name], err = c.Compile(url); err != nil {
				compileErr = fmt.Errorf("%s schema: %w", name, err)
				return
			}
		}
		compiled["state"] = compiled["room"]
	})
	if compileErr != nil {
		return compileErr
	}
	s, ok := compiled[stream]
	if !ok {
		return fmt.Errorf("no schema for stream %q", stream)
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(value))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidRecord, err)
	}
	if err := s.Validate(v); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidRecord, err)
	}
	return nil
}
