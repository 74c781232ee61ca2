package main

import (
	"bytes"
	"context"
	"encoding/json"
	"github.com/fedpipe/fedpipe/schema"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"
)

// openAPI is the part of docs/openapi.yaml the test reads.
type openAPI struct {
	Paths map[string]map[string]struct {
		Tags        []string `yaml:"tags"`
		RequestBody struct {
			Content map[string]struct {
				Example any `yaml:"example"`
			} `yaml:"content"`
		} `yaml:"requestBody"`
		Parameters []struct {
			Name    string `yaml:"name"`
			In      string `yaml:"in"`
			Example string `yaml:"example"`
		} `yaml:"parameters"`
	} `yaml:"paths"`
}

func loadOpenAPI(t *testing.T) (openAPI, []byte) {
	t.Helper()
	raw, err := os.ReadFile("../../docs/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc openAPI
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("docs/openapi.yaml: %v", err)
	}
	var generic any
	if err := yaml.Unmarshal(raw, &generic); err != nil {
		t.Fatal(err)
	}
	asJSON, err := json.Marshal(generic)
	if err != nil {
		t.Fatal(err)
	}
	return doc, asJSON
}

// The routes fedpipe's listeners serve (as their muxes registered them) and
// the OpenAPI document are the same, every documented operation is served,
// and every example request in the document is valid under its own schema
// and accepted by the running API.
func TestOpenAPIDocumentMatchesTheServedRoutes(t *testing.T) {
	doc, asJSON := loadOpenAPI(t)
	documented := map[string]string{} // "METHOD path" → listener tag
	for path, ops := range doc.Paths {
		for method, op := range ops {
			if len(op.Tags) != 1 {
				t.Fatalf("%s %s: want one tag naming its listener (ingest, admin or federation), got %v", method, path, op.Tags)
			}
			documented[strings.ToUpper(method)+" "+path] = op.Tags[0]
		}
	}

	// A running pipeline serves every documented operation (as its
	// listeners' muxes registered them), answers each (not 404/405), and
	// accepts every example.
	p := newPipeline(t, remotes(1))
	p.in.cfg.ServerName = "hs.test" // the examples' users are of hs.test
	p.in.cfg.Admin.Listen = "127.0.0.1:0"
	p.in.cfg.Federation.Listen = "127.0.0.1:0"
	p.start("ingest", "keys")
	served := map[string]string{}
	for _, listener := range []string{"ingest", "admin", "federation"} {
		h, ok := p.in.handlers[listener].(interface{ Routes() []string })
		if !ok {
			t.Fatalf("the %s listener's handler (%T) cannot list its routes", listener, p.in.handlers[listener])
		}
		for _, r := range h.Routes() {
			served[r] = listener
		}
	}
	for k, l := range served {
		if documented[k] != l {
			t.Errorf("served on the %s listener but not documented there: %s", l, k)
		}
	}
	for k, l := range documented {
		if served[k] != l {
			t.Errorf("documented on the %s listener but not served there: %s", l, k)
		}
	}

	// A fresh Apache Kafka broker elects the new topics' leaders a moment after
	// creating them; the admin routes read every partition's offsets.
	var topics []string
	for _, s := range []string{"room", "state", "presence", "usersync", "outbound", "deadletter"} {
		topics = append(topics, schema.Topic(p.cfg.Kafka.TopicPrefix, s))
	}
	leaders, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.k.WaitForLeaders(leaders, topics...); err != nil {
		t.Fatal(err)
	}
	seedAdminExamples(t, p)
	base := map[string]string{"ingest": "http://" + p.in.listeners["ingest"], "admin": "http://" + p.in.listeners["admin"],
		"federation": "http://" + p.in.listeners["federation"]}
	compiler := jsonschema.NewCompiler()
	compiler.DefaultDraft(jsonschema.Draft4) // OpenAPI 3.0 schema objects
	root, err := jsonschema.UnmarshalJSON(bytes.NewReader(asJSON))
	if err != nil {
		t.Fatal(err)
	}
	if err := compiler.AddResource("openapi.json", root); err != nil {
		t.Fatal(err)
	}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range documented {
			if !yield(k) {
				return
			}
		}
	})
	for _, k := range keys {
		method, path, _ := strings.Cut(k, " ")
		op := doc.Paths[path][strings.ToLower(method)]
		url := base[documented[k]] + path
		sep := "?"
		for _, prm := range op.Parameters {
			if prm.In == "query" && prm.Example != "" {
				url += sep + prm.Name + "=" + prm.Example
				sep = "&"
			}
		}
		for _, prm := range op.Parameters {
			if prm.In == "path" {
				if prm.Example == "" {
					t.Fatalf("%s: path parameter %s has no example", k, prm.Name)
				}
				url = strings.ReplaceAll(url, "{"+prm.Name+"}", prm.Example)
			}
		}
		var body []byte
		if c, ok := op.RequestBody.Content["application/json"]; ok {
			if c.Example == nil {
				t.Fatalf("%s: no example request", k)
			}
			body, err = json.Marshal(c.Example)
			if err != nil {
				t.Fatal(err)
			}
			ptr := "openapi.json#/paths/" + strings.ReplaceAll(strings.ReplaceAll(path, "~", "~0"), "/", "~1") + "/" + strings.ToLower(method) + "/requestBody/content/application~1json/schema"
			schema, err := compiler.Compile(ptr)
			if err != nil {
				t.Fatalf("%s: compiling its request schema: %v", k, err)
			}
			var v any
			_ = json.Unmarshal(body, &v)
			if err := schema.Validate(v); err != nil {
				t.Errorf("%s: the example breaks the document's own schema: %v", k, err)
			}
		}
		req, err := http.NewRequest(method, url, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var answer bytes.Buffer
		_, _ = answer.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: the documented example answered %d: %s", k, resp.StatusCode, answer.String())
		}
	}
	if len(keys) < len(served) {
		t.Fatalf("checked %d operations", len(keys))
	}
}
